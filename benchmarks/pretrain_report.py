"""The ``pretraining`` section of ``docs/results.md``: what a pretraining run learned (issue #12, item 2).

Reads a finished ``brainfm fit`` run of a :class:`~brainfm.tasks.PretrainModule` (its
``metrics.csv``, ``hparams.yaml`` and ``rejections.csv``, written by the CSV logger) and
reports, at every validation step, the held-out masked-reconstruction MSE against two
trivial predictors of the same masked patches of the same held-out windows:

* copy-the-mean: each channel's mean of its visible samples (``val/loss_mean_baseline``);
* neighbour interpolation: the inverse-distance-weighted mean of the same patch of the
  nearest visible channels of the type (``val/loss_neighbour_baseline``);

plus the neurodynamics loss and the artifact-rejection counts. The held-out windows are those
of the run's validation subjects (EEGMAT 28-31 in ``configs/pretrain/small-10s.yaml``),
masks fixed per batch, so the rows compare across steps and runs::

    brainfm fit --config configs/pretrain/small-10s.yaml
    python benchmarks/pretrain_report.py runs/small-10s/csv/version_0

``--section pretraining-aligned`` writes the same report of ``configs/pretrain/small-10s-aligned.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import pandas as pd
import yaml

from _results import write_section  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
VAL = ["val/loss", "val/loss_mean_baseline", "val/loss_neighbour_baseline", "val/nsp"]


def read_run(run: Path) -> dict:
    metrics = pd.read_csv(run / "metrics.csv")
    val = metrics.dropna(subset=["val/loss"])[["step", *[c for c in VAL if c in metrics]]]
    rows = []
    for rec in val.to_dict("records"):
        rec = {k: float(v) for k, v in rec.items()}
        rec["step"] = int(rec["step"]) + 1
        rec["below_mean_pct"] = 100 * (1 - rec["val/loss"] / rec["val/loss_mean_baseline"])
        if "val/loss_neighbour_baseline" in rec:
            rec["below_neighbour_pct"] = 100 * (1 - rec["val/loss"] / rec["val/loss_neighbour_baseline"])
        rows.append(rec)
    rejections = {}
    if (run / "rejections.csv").is_file():
        with open(run / "rejections.csv") as f:
            rejections = {r.pop("recording"): {k: int(v) for k, v in r.items()} for r in csv.DictReader(f)}
    hparams = yaml.safe_load((run / "hparams.yaml").read_text()) if (run / "hparams.yaml").is_file() else {}
    speed = metrics["train/samples_per_s"].dropna() if "train/samples_per_s" in metrics else pd.Series(dtype=float)
    return {"validation": rows, "rejections": rejections, "hparams": hparams,
            "train_samples_per_s_median": float(speed.median()) if len(speed) else None}


#: Heading of each section this script writes (``--section``).
TITLES = {
    "pretraining": "Pretraining: held-out masked reconstruction against trivial predictors (issue #12, item 2)",
    "pretraining-aligned": "Pretraining on per-subject aligned windows (`small-10s-aligned`): held-out masked "
                           "reconstruction against trivial predictors (issue #12)",
}


def markdown(report: dict, command: str, date: str, machine: str, minutes: float | None,
             section: str = "pretraining") -> str:
    lines = [
        f"## {TITLES[section]}",
        "",
        f"Command: `{command}` ({machine}; {date}).",
        "MSE on the masked patches of the validation subjects' windows, in the encoder's input units "
        "(µV / 100), with fixed masks. `copy-the-mean` predicts each channel's visible mean; `neighbour` "
        "interpolates each masked patch from the nearest visible channels of its type (inverse-distance "
        "weights). Negative percentages mean the model is worse than the baseline." + (
            " Windows are Euclidean-aligned per subject, so the MSE is in aligned units (each channel's "
            "population scale, 10 µV for EEG, / 100) and compares only within this table." if "aligned" in section else ""),
        "",
        "| step | brainfm MSE | copy-the-mean | neighbour | below copy-the-mean | below neighbour | neurodynamics loss |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["validation"]:
        lines.append(
            f"| {r['step']} | {r['val/loss']:.5f} | {r['val/loss_mean_baseline']:.5f} | "
            f"{r.get('val/loss_neighbour_baseline', float('nan')):.5f} | {r['below_mean_pct']:.1f} % | "
            f"{r.get('below_neighbour_pct', float('nan')):.1f} % | {r.get('val/nsp', float('nan')):.3f} |")
    rej = report["rejections"]
    if rej:
        total = {k: sum(v[k] for v in rej.values()) for k in ("windows", "rejected", "amplitude", "flat", "line")}
        by_source: dict[str, list[int]] = {}
        for rid, v in rej.items():
            source = rid.split("_")[0].rstrip("0123456789")
            acc = by_source.setdefault(source, [0, 0])
            acc[0] += v["windows"]
            acc[1] += v["rejected"]
        lines += ["", f"Artifact rejection (training and validation windows): {total['rejected']} of {total['windows']} "
                  f"rejected (amplitude {total['amplitude']}, flat {total['flat']}, line noise {total['line']}). "
                  "By source: " + ", ".join(f"{s} {r}/{n}" for s, (n, r) in sorted(by_source.items())) + "."]
    speed = report["train_samples_per_s_median"]
    if speed or minutes:
        lines += ["", "Training speed: " + (f"median {speed:.0f} windows/s" if speed else "")
                  + (f"; the run took {minutes:.0f} min" if minutes else "") + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run's log folder (runs/small-10s/csv/version_0)")
    ap.add_argument("--command", default="brainfm fit --config configs/pretrain/small-10s.yaml")
    ap.add_argument("--machine", default="2-core AMD EPYC CPU, no GPU")
    ap.add_argument("--minutes", type=float, default=None, help="wall time of the run, if known")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--section", choices=list(TITLES), default="pretraining",
                    help="the section of docs/results.md to write (pretraining-aligned: small-10s-aligned.yaml)")
    ap.add_argument("--notes", type=Path, default=None, help="markdown notes under the table")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    report = read_run(args.run)
    text = markdown(report, args.command, args.date, args.machine, args.minutes, args.section)
    if args.notes:
        text += "\n\n" + args.notes.read_text().strip()
    print(text)
    if not args.no_write:
        payload = {"experiment": args.section, "command": args.command, "date": args.date, "machine": args.machine,
                   **report}
        write_section(args.out, args.section, payload, text)


if __name__ == "__main__":
    main()
