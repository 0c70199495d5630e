"""fMRI on the sample: BOLD-as-sensors (path a) against MindBridge (path b), and event decoding.

Usage::

    python benchmarks/bench_fmri.py [--seeds 3] [--out runs/bench_fmri.json]

**Paths (a) and (b)**, one task both can do on these data (no stimuli, so no MindBridge
image targets): from 4 volumes of a run, forecast the next 4. Sources: nitime01 (path a;
path b also gets the 28-ROI nitime run, since it aggregates any number of voxels and its
cycle loss needs a second subject). New subject: nitime02, tuned on its volumes 0-23
(windows whose forecast ends by volume 24), scored on the 9 windows starting at volumes 24-32.
Score: MSE of the forecast in MindBridge's aggregated space (AdaptiveMaxPool1d to 64 per
volume, applied to path a's voxel forecast too), against persistence (repeat the last volume)
and zero (the cleaned signal's mean).

**Decoding**: the 576 events (6 types, 96 each) of nitime's event-related run, windows of 8
volumes after each onset, 5 contiguous folds, multinomial logistic regression on (1) the window
mean (the ROI-mean baseline), (2) the 8 volumes, (3) LSS GLM betas; chance 1/6.
"""

from __future__ import annotations

import argparse
import json
import platform
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_fmri.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    stores, _ = build_fmri_sample(default_sample_dir() / "fmri")
    store = ShardStore(stores["voxel"])
    a, b, r = (store.recording(i).read_all() for i in (A, B, R))
    data = {A: windows(a, range(a.shape[1] - 2 * K + 1)), R: windows(r, range(r.shape[1] - 2 * K + 1)),
            "calib": windows(b, range(SPLIT - 2 * K + 1)), "test": windows(b, range(SPLIT, b.shape[1] - 2 * K + 1))}
    xt, yt = data["test"]
    results = {"baselines": {"persistence": pooled_mse(xt[..., -1:].expand_as(yt), yt),
                             "zero": pooled_mse(torch.zeros_like(yt), yt),
                             "persistence_voxel": float(F.mse_loss(xt[..., -1:].expand_as(yt), yt)),
                             "zero_voxel": float(F.mse_loss(torch.zeros_like(yt), yt))},
               "n_windows": {k: int(len(v[0])) for k, v in data.items()}}
    t0 = time.perf_counter()
    runs = {"mindbridge": [], "mindbridge_no_cycle": [], "sensors_zero_shot": [], "sensors_tuned": [],
            "sensors_tuned_voxel": []}
    for seed in range(args.seeds):
        runs["mindbridge"].append(run_mindbridge(data, seed, cycle=0.5))
        runs["mindbridge_no_cycle"].append(run_mindbridge(data, seed, cycle=0.0))
        z, t, v = run_sensors(data, {A: store.recording(A).spec, B: store.recording(B).spec}, seed)
        runs["sensors_zero_shot"].append(z)
        runs["sensors_tuned"].append(t)
        runs["sensors_tuned_voxel"].append(v)
    results["forecast_mse"] = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "runs": v} for k, v in runs.items()}
    results["seconds"] = time.perf_counter() - t0
    results["decoding"] = decoding(store)
    results["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{'forecast (pooled MSE, nitime02 test)':<40} mean    sd")
    for k, v in {**{k: {"mean": x, "sd": 0.0} for k, x in results["baselines"].items()},
                 **results["forecast_mse"]}.items():
        print(f"{k:<40} {v['mean']:.4f} {v['sd']:.4f}")
    print("decoding, balanced accuracy (5 contiguous folds):")
    for k, v in results["decoding"].items():
        print(f"  {k}: {v['mean']:.3f} {v['folds']}" if isinstance(v, dict) else f"  {k}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
