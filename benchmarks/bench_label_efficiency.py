"""EEGMAT, fixed split, few labelled subjects: does pretraining help when labels are scarce? (issue #12)

With all 28 training subjects labelled, the recipe encoder does not beat the same
architecture trained from scratch (``recipe`` section of ``docs/results.md``): its
pretraining corpus is those same subjects' EEG, so it brings no signal the labels lack.
Self-supervised pretraining is meant for the other case, where unlabelled recordings are
plentiful and labelled ones are few (the premise of CBraMod, LaBraM and BENDR). This
benchmark measures that case on the CBraMod split:

* labels of only ``N`` training subjects (``--train-subjects``), drawn from subjects 0–27
  with the run's seed (``numpy.random.default_rng(seed)``), so each seed is another draw
  and the pretrained and scratch runs of a seed see the same subjects (a paired comparison);
* validation on subjects 28–31 (best validation check kept), test on 32–35, as always;
* brainfm ``pretrained-tokens`` (fine-tuned from the recipe encoder, trained on subjects 0–27
  *unlabelled*, validated on 28–31, never shown 32–35) against ``scratch-tokens`` (same architecture, random
  weights), both with label-free token statistics, on Euclidean-aligned windows;
* the same number of gradient steps at every ``N``: ``--epochs`` × 28 / N epochs, validated
  about 8 times, so scratch is not short of steps when ``N`` is small;
* the aligned classical pipeline and the per-subject feature-z-scored one on the same draw.

Rows go to ``--runs-log`` as they come; a re-run skips those there. One command regenerates
the ``label-efficiency`` section of ``docs/results.md`` and ``docs/results.json``::

    python benchmarks/bench_label_efficiency.py --store STORE --runs-log benchmarks/notes/label-efficiency-runs.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Montage name 'standard_1020' is deprecated")

import lightning.pytorch as pl  # noqa: E402
import numpy as np  # noqa: E402

from _results import add_section_args, collect_rows, done_keys, write_section  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from bench_alignment import VARIANTS, brainfm_module, classical_rows, paired_name, variant_method  # noqa: E402
from bench_decoding import LABELS, METRICS, fit_test  # noqa: E402
from brainfm.data.datamodule import DecodingDataModule  # noqa: E402
from brainfm.data.splits import eegmat_cbramod  # noqa: E402
from brainfm.pretrained import recipe_encoder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPLIT = eegmat_cbramod()
CLASSICAL = {"log band power + LR": ("align", False),
             "log band power + LR, per-subject feature z-score": ("none", True)}
#: validation checks per run, whatever the number of epochs
VAL_CHECKS = 8


def train_draw(n: int, seed: int) -> list[str]:
    """``n`` of the split's training subjects, drawn with ``seed`` (all of them when ``n`` is 28)."""
    train = list(SPLIT.train)
    picked = np.random.default_rng(seed).choice(len(train), size=n, replace=False)
    return [train[i] for i in sorted(picked)]


def datamodule(store: str, train: list[str], normalize: str) -> DecodingDataModule:
    dm = DecodingDataModule(store=store, split={"train": train, "val": list(SPLIT.val), "test": list(SPLIT.test)},
                            window_s=5.0, label_map=LABELS, batch_size=32,
                            normalize=None if normalize == "none" else normalize, stats_source="session")
    dm.setup()
    return dm


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    done = done_keys(args.runs_log, "train_subjects", "method", "seed")
    rows: list[dict[str, Any]] = []

    def add(n: int, train: list[str], method: str, normalize: str, seed: int, scores: dict, t0: float, **extra):
        rows.append({"train_subjects": n, "subjects": train, "method": method, "normalize": normalize, "seed": seed,
                     **{k: scores[k] for k in METRICS}, "seconds": round(time.perf_counter() - t0, 1), **extra})
        print(json.dumps(rows[-1]), flush=True)
        if args.runs_log:
            with open(args.runs_log, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")

    for seed in args.seeds:  # seeds outermost: a run stopped early has every N for its first seeds
        for n in args.train_subjects:
            train = train_draw(n, seed)
            dms: dict[str, DecodingDataModule] = {}

            def dm_for(normalize: str) -> DecodingDataModule:
                if normalize not in dms:
                    dms[normalize] = datamodule(args.store, train, normalize)
                return dms[normalize]

            for method, (normalize, feature_z) in CLASSICAL.items():
                if (n, method, seed) not in done:
                    t0 = time.perf_counter()
                    add(n, train, method, normalize, seed, classical_rows(dm_for(normalize), normalize, feature_z), t0)
            epochs = math.ceil(args.epochs * len(SPLIT.train) / n)
            for variant in args.variants:
                method = variant_method(variant, args.encoder_label)
                if (n, method, seed) in done:
                    continue
                t0 = time.perf_counter()
                pl.seed_everything(seed, workers=True)
                scores, _ = fit_test(brainfm_module(variant, args.encoder), dm_for("align"), epochs=epochs,
                                     select=True, val_every=max(1, epochs // VAL_CHECKS))
                add(n, train, method, "align", seed, scores, t0, epochs=epochs, encoder_sha256=args.encoder_sha256)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds per (N, method); ``paired`` is pretrained − scratch per seed."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["train_subjects"], r["method"]), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for (n, method), rs in sorted(groups.items(), key=lambda kv: kv[0]):
        out[f"{n} | {method}"] = {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs])))
                                  for k in METRICS} | {"seeds": sorted(r["seed"] for r in rs),
                                                       "normalize": rs[0]["normalize"]}
    scratch = VARIANTS["scratch-tokens"]
    tokens = scratch.removeprefix("brainfm from scratch")  # ", label-free token statistics": pair like with like
    pretrained = sorted({r["method"] for r in rows
                         if r["method"].startswith("brainfm pretrained") and r["method"].endswith(tokens)})
    for n in sorted({r["train_subjects"] for r in rows}):
        by = {m: {r["seed"]: r["balanced_accuracy"] for r in rows if r["train_subjects"] == n and r["method"] == m}
              for m in (*pretrained, scratch)}
        for method in pretrained:
            seeds = sorted(set(by[method]) & set(by[scratch]))
            if seeds:
                diffs = [by[method][s] - by[scratch][s] for s in seeds]
                key = f"{n} | {paired_name(method)} − scratch"
                out[key] = {"per_seed": dict(zip(seeds, diffs)), "mean": float(np.mean(diffs)), "pretrained": method}
    return out


def markdown(summary: dict[str, Any], command: str, date: str, epochs: int, notes: str = "") -> str:
    def cell(v) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    lines = [
        "## EEGMAT, fixed split, few labelled subjects: pretrained against scratch (issue #12)",
        "",
        f"Command: `{command}` (2-core CPU, no GPU; {date}). CBraMod split, but only N of training subjects 0–27 "
        "labelled (drawn per seed; pretrained and scratch runs of a seed share the draw); validation 28–31, test "
        "32–35; 19 EEG channels, 200 Hz, 5-s windows, Euclidean alignment from each subject's own unlabelled "
        "session. brainfm: `small` encoder of `configs/pretrain/small-10s.yaml` (`pretrained`: the recipe weights, "
        "trained on subjects 0–27 unlabelled, validated on 28–31, never saw 32–35; `scratch`: random weights), "
        f"label-free token statistics, full fine-tune for the steps of {epochs} epochs of 28 subjects "
        f"({epochs} × 28 / N epochs), best validation check kept. Mean ± std over seeds.",
        "",
        "| labelled subjects | method | normalize | seeds | balanced accuracy | AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        n, method = key.split(" | ")
        if "per_seed" in s:
            continue
        lines.append(f"| {n} | {method} | {s['normalize']} | {len(s['seeds'])} | {cell(s['balanced_accuracy'])} | "
                     f"{cell(s['auroc'])} |")
    lines += ["", "Paired difference in balanced accuracy, pretrained − scratch (same seed, same labelled subjects):", "",
              "| labelled subjects | encoder | mean | per seed |", "|---|---|---|---|"]
    for key, s in summary.items():
        if "per_seed" in s:
            per = ", ".join(f"{d:+.3f}" for d in s["per_seed"].values())
            lines.append(f"| {key.split(' | ')[0]} | {paired_name(s['pretrained'])} | {s['mean']:+.3f} | {per} |")
    return "\n".join(lines) + "\n" + (f"\n{notes}" if notes else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="the sample store (brainfm sample-data), all 36 EEGMAT subjects")
    ap.add_argument("--train-subjects", type=int, nargs="+", default=[2, 4, 8, 28],
                    help="numbers of labelled training subjects (each at most 28)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["pretrained-tokens", "scratch-tokens"], choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=8, help="epochs at 28 subjects; fewer subjects get as many steps")
    ap.add_argument("--encoder", type=Path, default=None, help="default: brainfm.pretrained.recipe_encoder()")
    ap.add_argument("--encoder-label", default=None,
                    help="name of --encoder in the pretrained rows' method, e.g. 'aligned pretraining' (default: "
                         "none, the recipe encoder)")
    add_section_args(ap, ROOT / "docs")
    args = ap.parse_args()
    if any(not 1 <= n <= len(SPLIT.train) for n in args.train_subjects):
        ap.error(f"--train-subjects must lie in 1..{len(SPLIT.train)}")
    args.encoder = args.encoder or recipe_encoder()
    args.encoder_sha256 = hashlib.sha256(Path(args.encoder).read_bytes()).hexdigest()[:16]
    if not (args.from_runs or args.store):
        ap.error("--store is needed unless --from-runs is given")
    rows = collect_rows(args, run)
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    if args.no_write:
        return
    command = ("python benchmarks/bench_label_efficiency.py --store STORE --runs-log "
               "benchmarks/notes/label-efficiency-runs.jsonl")
    notes = args.notes.read_text() if args.notes else ""
    write_section(args.out, "label-efficiency", {"experiment": "eegmat-label-efficiency", "command": command,
                                                  "date": time.strftime("%Y-%m-%d"), "epochs": args.epochs,
                                                  "summary": summary, "runs": rows},
                  markdown(summary, command, time.strftime("%Y-%m-%d"), args.epochs, notes))


if __name__ == "__main__":
    main()
