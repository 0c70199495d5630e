"""fMRI on the sample: BOLD-as-sensors (path a) against MindBridge (path b), and event decoding.

Usage::

    python benchmarks/bench_fmri.py --seeds 3 --out runs/bench_fmri.json --results docs
    python benchmarks/bench_fmri.py --render runs/bench_fmri.json --results docs   # re-render only
    # the same seeds as separate processes (a loaded machine), then merged:
    python benchmarks/bench_fmri.py --seed-list 1 --out runs/bench_fmri_s1.json   # one per seed
    python benchmarks/bench_fmri.py --merge runs/bench_fmri_s*.json --out runs/bench_fmri.json --results docs

``--results DIR`` upserts the ``fmri`` section of ``DIR/results.md`` and ``DIR/results.json``
(:func:`benchmarks._results.write_section`); ``--render`` rebuilds it from a saved JSON without
training again.

**Paths (a) and (b)**, one task both can do on these data (no stimuli, so no MindBridge
image targets): from 4 volumes of a run, forecast the next 4. Sources: nitime01 (path a;
path b also gets the 28-ROI nitime run, since it aggregates any number of voxels and its
cycle loss needs a second subject). New subject: nitime02, tuned on its volumes 0-23
(windows whose forecast ends by volume 24), scored on the 9 windows starting at volumes 24-32.
Score: MSE of the forecast in MindBridge's aggregated space (AdaptiveMaxPool1d to 64 per
volume, applied to path a's voxel forecast too), against persistence (repeat the last volume),
zero (the cleaned signal's mean) and the calibration mean (the mean of the new subject's
pooled calibration futures, one constant forecast; it carries the positive offset max-pooling
puts on the target, so a model must beat it to have learned dynamics).

Every trained figure is run with seeds ``0..seeds-1`` (mean ± sd, population sd); the
baselines and the decoding (fixed folds, deterministic lbfgs) involve no seed.

**Decoding**: the 576 events (6 types, 96 each) of nitime's event-related run, windows of 8
volumes after each onset, 5 contiguous folds, multinomial logistic regression on (1) the window
mean (the ROI-mean baseline), (2) the 8 volumes, (3) LSS GLM betas; chance 1/6.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _results import write_section  # benchmarks/ is on sys.path when run as a script
from brainfm.data.root import default_sample_dir
from brainfm.data.store import ShardStore
from brainfm.models import ModelConfig
from brainfm.models.encoder import BrainEncoder
from brainfm.models.heads import ReconstructionHead
from brainfm.models.mindbridge import MindBridge, MindBridgeConfig, VoxelAggregation
from brainfm.pipelines.fmri_sample import build_fmri_sample
from brainfm.signal import collate_sensors
from brainfm.tasks.fmri import (bold_patches, bold_spec_for_model, event_windows, lss_betas, masked_reconstruction,
                                volumes_of)

K, N_POOL, SPLIT = 4, 64, 24
A, B, R = "sub-nitime01_task-rest_bold", "sub-nitime02_task-rest_bold", "sub-nitimeroi_task-rest_atlas-nitime28_timeseries"
EV = "sub-evrel_task-events_atlas-single_timeseries"


def windows(data: np.ndarray, starts) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(W, C, K)`` and futures ``(W, C, K)`` of the windows starting at ``starts``."""
    x = np.stack([data[:, t: t + K] for t in starts])
    y = np.stack([data[:, t + K: t + 2 * K] for t in starts])
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


def pooled_mse(pred: torch.Tensor, future: torch.Tensor) -> float:
    agg = VoxelAggregation(N_POOL)
    return float(F.mse_loss(agg(pred), agg(future)))


def run_mindbridge(data: dict, seed: int, cycle: float, epochs: int = 150, tune_epochs: int = 150) -> float:
    torch.manual_seed(seed)
    model = MindBridge(MindBridgeConfig(n_pool=N_POOL, n_volumes=K, cycle_weight=cycle), subjects=[A, R])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        loss = sum(model.loss(*data[s], s)["loss"] for s in (A, R))
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = model.reset_tune(B)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    for _ in range(tune_epochs):
        loss = model.loss(*data["calib"], B)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(data["test"][0], B)
        return float(F.mse_loss(out["pred"], model.aggregate(data["test"][1])))


def run_sensors(data: dict, specs: dict, seed: int, steps: int = 40, tune_steps: int = 20) -> tuple[float, float, float]:
    """Path (a): tiny encoder, voxels as sensors, last of 2 patches masked (= forecast)."""
    torch.manual_seed(seed)
    config = ModelConfig.from_name("tiny")
    encoder, head = BrainEncoder(config), ReconstructionHead(config.d_model, config.patch_size)
    def batch(x, y):
        spec = specs[A] if x.shape[1] == specs[A].n_channels else specs[B]
        sensors = collate_sensors([bold_spec_for_model(spec, config.sfreq)])
        full = bold_patches(torch.cat([x, y], dim=-1), K, config.patch_size)  # (W, C, 2P)
        w = full.shape[0]
        b = {"x": full, **{k: v.expand(w, *v.shape[1:]) for k, v in sensors.items()}}
        mask = torch.zeros(w, full.shape[1], 2, dtype=torch.bool)
        mask[:, :, 1] = True
        return b, mask

    def train(pairs, n):
        opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-2)
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            idx = torch.randperm(len(pairs[0]), generator=g)[:8]
            loss, _ = masked_reconstruction(encoder, head, *batch(pairs[0][idx], pairs[1][idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def score():
        with torch.no_grad():
            b, mask = batch(*data["test"])
            _, pred = masked_reconstruction(encoder, head, b, mask)
            vols = volumes_of(pred[:, :, 1], K)  # (W, C, K)
            return pooled_mse(vols, data["test"][1]), float(F.mse_loss(vols, data["test"][1]))

    train(data[A], steps)
    zero_shot = score()
    train(data["calib"], tune_steps)
    tuned = score()
    return zero_shot[0], tuned[0], tuned[1]


def decoding(store: ShardStore) -> dict:
    rec = store.recording(EV)
    x, y, onset = event_windows(rec, 8)
    betas = lss_betas(rec.read_all(), onset, 1.0 / rec.sfreq)
    feats = {"window mean (ROI-mean baseline)": x.mean(-1), "8 volumes": x[:, 0], "LSS GLM beta": betas}
    out = {"n_events": int(len(y)), "n_classes": int(len(set(y))), "chance": 1.0 / len(set(y))}
    for name, f in feats.items():
        scores = []
        for train, test in KFold(5).split(f):
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(f[train], y[train])
            scores.append(balanced_accuracy_score(y[test], clf.predict(f[test])))
        out[name] = {"mean": float(np.mean(scores)), "folds": [round(float(s), 3) for s in scores]}
    return out


def pm(v: dict, digits: int = 2) -> str:
    """``mean ± sd`` of a result with runs; the plain value for a baseline."""
    return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}" if "sd" in v else f"{v['mean']:.{digits}f}"


def reading(f: dict, b: dict, n: dict) -> str:
    """Which path works better on these data, in the measured terms only."""
    best, other = sorted(("mindbridge", "sensors_tuned"), key=lambda k: f[k]["mean"])
    name = {"mindbridge": "(b) MindBridge", "sensors_tuned": "(a) BOLD as sensors"}
    mb, cm = f["mindbridge"], b["calib_mean"]
    beats = mb["mean"] + mb["sd"] < cm
    return (f"**Which path works better here:** {name[best]}, pooled MSE {pm(f[best])} against {pm(f[other])}. "
            f"Against the constant calibration-mean forecast ({cm:.2f}) MindBridge is "
            + (f"better by {cm - mb['mean']:.2f}, more than one sd" if beats else "not better beyond one sd")
            + f"; most of its lead over zero ({b['zero']:.2f}) and persistence ({b['persistence']:.2f}) is the "
            "offset that max-pooling puts on the target, which its builder learns. Path (a) must learn the dynamics "
            f"of 1784 sensors from {n[A]} windows with a transformer; its voxel MSE is "
            f"{pm(f['sensors_tuned_voxel'])} against the zero forecast's {b['zero_voxel']:.2f}. MindBridge's "
            "per-subject MLPs on 64 pooled values fit this little data. The cycle loss made "
            f"{'no' if abs(f['mindbridge']['mean'] - f['mindbridge_no_cycle']['mean']) < max(mb['sd'], 1e-9) else 'a'} "
            "difference beyond one sd. None of this says how the paths compare on real fMRI datasets.")


def markdown(res: dict) -> str:
    """The ``fmri`` section of docs/results.md from a result dict of :func:`main`."""
    f, b, d, n = res["forecast_mse"], res["baselines"], res["decoding"], res["n_windows"]

    def cell(key: str | None) -> str:
        return "–" if key is None else pm(f[key]) if key in f else f"{b[key]:.2f}"

    def row(name: str, key: str, vkey: str | None = None) -> str:
        return f"| {name} | {cell(key)} | {cell(vkey)} |"

    lines = [
        "## fMRI (nitime sample): BOLD as sensors vs MindBridge, and event decoding",
        "",
        f"`{res['command']}` ({res['date']}, {res['machine_note']}; {res['seconds']:.0f} s of wall time summed "
        f"over the per-seed runs of {res['seeds']} seeds). Details and reading: `docs/fmri.md`.",
        "",
        "**Data size, plainly.** Two nitime NIfTI runs of 40 volumes (1784 and 1792 voxels, TR 1.35 s) and one "
        "28-ROI run of 250 volumes. Task: from 4 volumes forecast the next 4. Sources: "
        f"{n[A]} windows of `nitime01` (path b adds {n[R]} of the ROI run); new subject `nitime02`: "
        f"{n['calib']} calibration windows, **{n['test']} test windows**. Score: MSE in MindBridge's pooled space "
        "(64 per volume), (% signal change)²; mean ± sd over "
        f"{res['seeds']} seeds (baselines have no seed).",
        "",
        "| forecast on nitime02 | pooled MSE | voxel MSE |",
        "|---|---:|---:|",
        row("zero (the cleaned mean)", "zero", "zero_voxel"),
        row("persistence (repeat the last volume)", "persistence", "persistence_voxel"),
        row("calibration mean (constant forecast)", "calib_mean", "calib_mean_voxel"),
        row("(b) MindBridge, reset-tuned", "mindbridge"),
        row("(b) MindBridge without cycle loss", "mindbridge_no_cycle"),
        row("(a) sensors, zero-shot", "sensors_zero_shot"),
        row("(a) sensors, tuned on the calibration windows", "sensors_tuned", "sensors_tuned_voxel"),
        "",
        reading(f, b, n),
        "",
        f"**Event decoding** (nitime's event-related run: **one** BOLD series, {d['n_events']} events of "
        f"{d['n_classes']} types; windows of 8 volumes after onset; 5 contiguous folds; multinomial logistic "
        "regression; balanced accuracy; no seed enters, so it is one number).",
        "",
        "| features | balanced accuracy (mean over folds) | folds |",
        "|---|---:|---|",
        f"| chance | {d['chance']:.3f} | |",
    ]
    for key in ("window mean (ROI-mean baseline)", "8 volumes", "LSS GLM beta"):
        lines.append(f"| {key} | {d[key]['mean']:.3f} | {', '.join(f'{x:.3f}' for x in d[key]['folds'])} |")
    lines += ["", "All near chance: the event type is barely decodable from one series with events every 3-9 "
              "volumes; no foundation-model path is claimed on it (path b needs voxels, path a a single sensor)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_fmri.json")
    parser.add_argument("--results", default=None, help="folder of results.md/json to upsert the 'fmri' section in")
    parser.add_argument("--render", default=None, help="rebuild the section from this saved JSON (no training)")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None, help="run these seeds (default 0..seeds-1)")
    parser.add_argument("--merge", nargs="+", default=None, help="combine per-seed JSONs into one result")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a shared 2-core machine 2 threads made "
                             "MindBridge's small MLPs 45x costlier in CPU time (measured, OpenMP spin-waits)")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        if args.results:
            write_section(Path(args.results), "fmri", results, markdown(results))
        print(markdown(results))
        return results
    if args.merge:
        results = merge([json.loads(Path(f).read_text()) for f in args.merge])
        results["command"] = ("python benchmarks/bench_fmri.py --seed-list S --out runs/bench_fmri_sS.json` for S = "
                              + ", ".join(str(x) for x in results["seed_list"]) + " (one process each), then "
                              "`python benchmarks/bench_fmri.py --merge runs/bench_fmri_s*.json --out "
                              "runs/bench_fmri.json --results docs")
        return finish(results, args)
    torch.set_num_threads(args.threads)
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    stores, _ = build_fmri_sample(default_sample_dir() / "fmri")
    store = ShardStore(stores["voxel"])
    a, b, r = (store.recording(i).read_all() for i in (A, B, R))
    data = {A: windows(a, range(a.shape[1] - 2 * K + 1)), R: windows(r, range(r.shape[1] - 2 * K + 1)),
            "calib": windows(b, range(SPLIT - 2 * K + 1)), "test": windows(b, range(SPLIT, b.shape[1] - 2 * K + 1))}
    xt, yt = data["test"]
    agg = VoxelAggregation(N_POOL)
    calib_pooled = agg(data["calib"][1]).mean(0, keepdim=True)  # (1, K, N): one constant forecast
    calib_voxel = data["calib"][1].mean(0, keepdim=True)  # (1, C, K)
    results = {"baselines": {"persistence": pooled_mse(xt[..., -1:].expand_as(yt), yt),
                             "zero": pooled_mse(torch.zeros_like(yt), yt),
                             "calib_mean": float(F.mse_loss(calib_pooled.expand(len(yt), -1, -1), agg(yt))),
                             "persistence_voxel": float(F.mse_loss(xt[..., -1:].expand_as(yt), yt)),
                             "zero_voxel": float(F.mse_loss(torch.zeros_like(yt), yt)),
                             "calib_mean_voxel": float(F.mse_loss(calib_voxel.expand_as(yt), yt))},
               "n_windows": {k: int(len(v[0])) for k, v in data.items()}}
    t0 = time.perf_counter()
    runs = {"mindbridge": [], "mindbridge_no_cycle": [], "sensors_zero_shot": [], "sensors_tuned": [],
            "sensors_tuned_voxel": []}
    for seed in seeds:
        runs["mindbridge"].append(run_mindbridge(data, seed, cycle=0.5))
        runs["mindbridge_no_cycle"].append(run_mindbridge(data, seed, cycle=0.0))
        z, t, v = run_sensors(data, {A: store.recording(A).spec, B: store.recording(B).spec}, seed)
        runs["sensors_zero_shot"].append(z)
        runs["sensors_tuned"].append(t)
        runs["sensors_tuned_voxel"].append(v)
        done = ", ".join(f"{k} {v[-1]:.3f}" for k, v in runs.items())
        print(f"seed {seed} done at {time.perf_counter() - t0:.0f} s: {done}", flush=True)
    results["forecast_mse"] = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "runs": v}
                               for k, v in runs.items()}
    results["seconds"] = time.perf_counter() - t0
    results["decoding"] = decoding(store)
    results["seeds"] = len(seeds)
    results["seed_list"] = seeds
    results["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    results["machine_note"] = "2-core AMD EPYC, no GPU, shared with other jobs"
    results["date"] = datetime.date.today().isoformat()
    results["command"] = "python benchmarks/bench_fmri.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return finish(results, args)


def merge(parts: list[dict]) -> dict:
    """One result from per-seed results (same data and baselines; runs concatenated)."""
    out = dict(parts[0])
    runs = {k: [x for p in parts for x in p["forecast_mse"][k]["runs"]] for k in out["forecast_mse"]}
    out["forecast_mse"] = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "runs": v} for k, v in runs.items()}
    out["seed_list"] = [s for p in parts for s in p["seed_list"]]
    out["seeds"] = len(out["seed_list"])
    out["seconds"] = float(sum(p["seconds"] for p in parts))
    return out


def finish(results: dict, args) -> dict:
    """Print the table, write ``--out`` and, with ``--results``, the results section."""
    print(f"{'forecast (pooled MSE, nitime02 test)':<40} mean    sd")
    for k, v in {**{k: {"mean": x, "sd": 0.0} for k, x in results["baselines"].items()},
                 **results["forecast_mse"]}.items():
        print(f"{k:<40} {v['mean']:.4f} {v['sd']:.4f}")
    print("decoding, balanced accuracy (5 contiguous folds):")
    for k, v in results["decoding"].items():
        print(f"  {k}: {v['mean']:.3f} {v['folds']}" if isinstance(v, dict) else f"  {k}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    if args.results:
        write_section(Path(args.results), "fmri", results, markdown(results))
    return results


if __name__ == "__main__":
    main()
