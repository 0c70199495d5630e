"""EEGMAT decoding: brainfm against baselines on identical subject splits, over seeds.

Protocols (EEGMAT, rest vs mental arithmetic, 19 EEG channels, 200 Hz, 5-s windows):

``fixed``
    CBraMod's split: subjects 0–27 train, 28–31 validation, 32–35 test. Every deep model
    keeps its best validation epoch (balanced accuracy); the classical pipeline picks C
    on validation. Methods: log band power + logistic regression, braindecode EEGNet,
    ShallowFBCSPNet and CBraMod (from scratch), brainfm from scratch, pretrained + linear
    probe, pretrained + full fine-tune.
``cross-subject``
    Subject folds (``--folds``; 36 = leave-one-subject-out): per fold, models train on the
    other subjects (fixed epochs, no validation), and every held-out subject is scored on
    the same test windows (its data after the first 120 s) with
    - no adaptation (brainfm fine-tuned with subject layers; the classical pipeline),
    - brainfm reset-tuned on its first 30, 60 or 120 s (fresh subject layers, trunk frozen),
    - within-subject few-shot: the classical pipeline trained on those seconds only.
    Scores are averaged over held-out subjects (the across-subject std is reported too).

brainfm is pretrained per seed (``--pretrain-steps`` of ``configs/pretrain/quickstart-nsp.yaml``
on the sample store, EEGMAT subjects 32–35 excluded) and cached in ``--workdir``.

One command regenerates the ``decoding`` section of ``docs/results.md`` and
``docs/results.json`` (seeds fix initialisation, data order and pretraining)::

    python benchmarks/bench_decoding.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Montage name 'standard_1020' is deprecated")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")

import lightning.pytorch as pl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from _results import write_section  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from brainfm.data.datamodule import DecodingDataModule  # noqa: E402
from brainfm.data.splits import kfold_subjects  # noqa: E402
from brainfm.pipelines.targets import has_target_set, precompute_targets  # noqa: E402
from brainfm.tasks import BaselineModule, DecodeModule  # noqa: E402
from brainfm.tasks.baselines import classical_pipeline, log_bandpower_features  # noqa: E402
from probe_eegmat import pretrain  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"rest": 0, "arithmetic": 1}
SUBJECTS = [f"eegmat{i:02d}" for i in range(36)]
METRICS = ("balanced_accuracy", "kappa", "f1_weighted", "auroc")
C_GRID = (0.01, 0.1, 1.0, 10.0)
ADAPT_SECONDS = (30.0, 60.0, 120.0)
NOTES = """
What the tables say, and what limits them:

* **Targets not reached.** The issue asks for ≥ 0.80 balanced accuracy fine-tuned on the fixed
  split and ≥ 0.85 after reset-tuning with 60 s under LOSO. brainfm reaches 0.647 ± 0.024 and
  0.676 ± 0.012. The limit is the pretraining and the model, not the protocol: a `tiny`
  encoder (2 layers, d = 32, 21 k parameters) pretrained for 2000 steps (≈ 3 min on 2 CPU cores)
  on the 2.9-h sample store. CBraMod's paper reports about 0.73 on this split after pretraining a
  model of a few million parameters on thousands of hours of TUEG; the classical pipeline's 0.750
  here is already at that level.
* **Pretraining helps.** Same architecture and budget: from scratch 0.598 ± 0.062, pretrained +
  full fine-tune 0.647 ± 0.024 (and a lower spread), linear probe 0.644 ± 0.054. Every deep
  model, braindecode's included, stays below the log band-power pipeline on 28 training subjects.
* **Reset-tuning helps, monotonically in the seconds given:** 0.593 without adaptation, then
  0.645 / 0.676 / 0.693 with 30 / 60 / 120 s, training 425 parameters per subject with the trunk
  and head frozen. Within-subject few-shot log band power is far stronger (0.83 / 0.93 / 0.96):
  with a subject's own labelled minute, rest and arithmetic are easy to separate, and a frozen
  weak trunk, not the amount of calibration data, is the bottleneck of reset-tuning here.
* **Protocol deviations, stated.** Cross-subject uses 4 subject folds (every subject held out
  once, each fold trains on 27 subjects), not 36 LOSO folds, for the 2-core CPU budget;
  `--folds 36` runs LOSO. The classical pipeline's 0.674 across these folds matches the issue's
  LOSO reference (0.67 ± 0.16). braindecode CBraMod trains 3 epochs (≈ 60 s per epoch on this CPU,
  15× brainfm `tiny`), so its figure is a lower bound. Pretraining excluded subjects 32–35 only,
  so in the cross-subject folds the encoder had seen the *unlabelled* EEG of the other held-out
  subjects (self-supervised, no labels). The classical rows have zero seed spread because
  logistic regression is deterministic.
"""

for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(name).setLevel(logging.ERROR)


# -- running one model ----------------------------------------------------------------------
def _trainer(tmp: str, epochs: int | None = None, steps: int | None = None, select: bool = False,
             val_every: int = 1) -> pl.Trainer:
    callbacks = [ModelCheckpoint(dirpath=tmp, monitor="val/balanced_accuracy", mode="max", save_top_k=1)] if select else []
    return pl.Trainer(
        max_epochs=epochs if epochs is not None else -1, max_steps=steps if steps is not None else -1,
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=select, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0, num_sanity_val_steps=0,
        limit_val_batches=None if select else 0, check_val_every_n_epoch=val_every,
    )


def fit_test(module: pl.LightningModule, dm: DecodingDataModule, *, epochs: int | None = None,
             steps: int | None = None, select: bool = False,
             val_every: int = 1) -> tuple[dict[str, float], pl.LightningModule]:
    """Train, then test (the best validation epoch when ``select``, validating every ``val_every``
    epochs); metrics without the prefix."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(tmp, epochs, steps, select, val_every)
        trainer.fit(module, dm)
        out = trainer.test(module, dm, ckpt_path="best" if select else None, verbose=False)[0]
        if select:  # leave the module holding the selected weights
            best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
            module.load_state_dict(best["state_dict"])
    return {k.removeprefix("test/"): float(v) for k, v in out.items() if k.removeprefix("test/") in METRICS}, module


def test_only(module: pl.LightningModule, dm: DecodingDataModule) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = _trainer(tmp).test(module, dm, verbose=False)[0]
    return {k.removeprefix("test/"): float(v) for k, v in out.items() if k.removeprefix("test/") in METRICS}


def arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    xs = [dataset[k]["x"].numpy() for k in range(len(dataset))]
    return np.stack(xs), np.asarray(dataset.labels)


def classical_scores(clf, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

    pred, prob = clf.predict(x), clf.predict_proba(x)[:, 1]
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)), "kappa": float(cohen_kappa_score(y, pred)),
            "f1_weighted": float(f1_score(y, pred, average="weighted")), "auroc": float(roc_auc_score(y, prob))}


# -- protocols ------------------------------------------------------------------------------
def fixed_protocol(store: str, seed: int, encoder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    dm = DecodingDataModule(store=store, split="eegmat-cbramod", window_s=5.0, label_map=LABELS, batch_size=32)
    dm.setup()

    def add(method: str, scores: dict[str, float], t0: float) -> None:
        rows.append({"protocol": "fixed", "method": method, "seed": seed, **scores, "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)

    t0 = time.perf_counter()
    feats = {p: (log_bandpower_features(*_x_sfreq(dm.sets[p], dm.sfreq)), dm.sets[p].labels) for p in ("train", "val", "test")}
    best_c = max(C_GRID, key=lambda c: classical_scores(classical_pipeline(c, seed).fit(*feats["train"]), *feats["val"])["balanced_accuracy"])
    add("log band power + LR", classical_scores(classical_pipeline(best_c, seed).fit(*feats["train"]), *feats["test"]), t0)

    for name, epochs in (("EEGNet", args.epochs), ("ShallowFBCSPNet", args.epochs), ("CBraMod", args.cbramod_epochs)):
        if epochs <= 0:
            continue
        t0 = time.perf_counter()
        pl.seed_everything(seed, workers=True)
        add(f"braindecode {name} (scratch)", fit_test(BaselineModule(name), dm, epochs=epochs, select=True)[0], t0)

    brainfm_runs = (("brainfm scratch", dict(model="tiny", mode="full")),
                    ("brainfm pretrained + linear probe", dict(init_from=str(encoder), mode="linear", lr=3e-3)),
                    ("brainfm pretrained + full fine-tune", dict(init_from=str(encoder), mode="full")))
    for method, kwargs in brainfm_runs:
        t0 = time.perf_counter()
        pl.seed_everything(seed, workers=True)
        add(method, fit_test(DecodeModule(classes=list(LABELS), **kwargs), dm, epochs=args.epochs, select=True)[0], t0)
    return rows


def _x_sfreq(dataset, sfreq: float) -> tuple[np.ndarray, float]:
    return arrays(dataset)[0], sfreq


def cross_subject_protocol(store: str, seed: int, encoder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    test_after = max(ADAPT_SECONDS)
    for fold in kfold_subjects(SUBJECTS, args.folds, seed=0):  # the same folds for every seed
        t0 = time.perf_counter()
        train_dm = DecodingDataModule(store=store, split={"train": list(fold.train)}, window_s=5.0, label_map=LABELS,
                                      batch_size=32)
        train_dm.setup()
        pl.seed_everything(seed, workers=True)
        module = DecodeModule(init_from=str(encoder), mode="full", subject_layers=True, classes=list(LABELS))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = _trainer(tmp, epochs=args.fold_epochs)
            trainer.fit(module, train_dm)
            decoder_path = Path(tmp) / "decoder.safetensors"
            module.export_safetensors(decoder_path)
            xtr, ytr = arrays(train_dm.sets["train"])
            classical = classical_pipeline(1.0, seed).fit(log_bandpower_features(xtr, train_dm.sfreq), ytr)
            print(f"fold {fold.name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
            for subject in fold.test[: args.limit_subjects]:
                for seconds in ADAPT_SECONDS:
                    dm = DecodingDataModule(store=store, window_s=5.0, label_map=LABELS, batch_size=32,
                                            adapt_subjects=[subject], adapt_seconds=seconds,
                                            adapt_test_after_s=test_after, adapt_stride_s=args.adapt_stride)
                    dm.setup()
                    base = {"protocol": "cross-subject", "fold": fold.name, "subject": subject, "seed": seed}
                    xte, yte = arrays(dm.sets["test"])
                    fte = log_bandpower_features(xte, dm.sfreq)
                    if seconds == ADAPT_SECONDS[0]:  # no adaptation: once per subject, on the same test windows
                        rows.append({**base, "method": "brainfm fine-tuned, no adaptation", "seconds_adapt": 0,
                                     **test_only(DecodeModule(init_from=str(decoder_path), mode="full"), dm)})
                        rows.append({**base, "method": "log band power + LR, no adaptation", "seconds_adapt": 0,
                                     **classical_scores(classical, fte, yte)})
                    pl.seed_everything(seed, workers=True)
                    reset = DecodeModule(init_from=str(decoder_path), mode="reset", lr=args.reset_lr,
                                         weight_decay=args.reset_weight_decay)
                    rows.append({**base, "method": "brainfm reset-tuned", "seconds_adapt": seconds,
                                 **fit_test(reset, dm, steps=args.reset_steps)[0]})
                    xad, yad = arrays(dm.sets["train"])
                    few = classical_pipeline(1.0, seed).fit(log_bandpower_features(xad, dm.sfreq), yad)
                    rows.append({**base, "method": "log band power + LR, within-subject few-shot",
                                 "seconds_adapt": seconds, **classical_scores(few, fte, yte)})
            print(f"fold {fold.name}: done in {time.perf_counter() - t0:.0f} s; last rows "
                  + json.dumps(rows[-4:]), flush=True)
    return rows


# -- reporting ------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"fixed": {}, "cross-subject": {}}
    for r in rows:
        if r["protocol"] == "fixed":
            summary["fixed"].setdefault(r["method"], []).append(r)
    summary["fixed"] = {m: {k: _mean_std([r[k] for r in rs]) for k in METRICS} | {"n_seeds": len(rs)}
                        for m, rs in summary["fixed"].items()}
    cross: dict[tuple[str, float], dict[int, list[dict]]] = {}
    for r in rows:
        if r["protocol"] == "cross-subject":
            cross.setdefault((r["method"], r["seconds_adapt"]), {}).setdefault(r["seed"], []).append(r)
    for (method, secs), by_seed in sorted(cross.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        entry = {}
        for k in METRICS:
            per_seed = [float(np.mean([r[k] for r in rs])) for rs in by_seed.values()]  # mean over subjects
            across = [float(np.std([r[k] for r in rs])) for rs in by_seed.values()]
            entry[k] = _mean_std(per_seed)
            entry[f"{k}_across_subjects_std"] = float(np.mean(across))
        entry["n_seeds"] = len(by_seed)
        entry["n_subjects"] = len(next(iter(by_seed.values())))
        summary["cross-subject"][f"{method} | {secs:g} s"] = entry
    return summary


def markdown(summary: dict[str, Any], args: argparse.Namespace, counts: dict[str, list[int]], command: str) -> str:
    def cell(v: tuple[float, float]) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    lines = [
        "## EEGMAT decoding: fine-tuning, reset-tuning and baselines (issue #5)",
        "",
        f"Command: `{command}` (2-core CPU, no GPU; {args.date}). Mean ± std over seeds "
        + ", ".join(map(str, args.seeds)) + ". EEGMAT (rest vs mental arithmetic), 19 EEG channels, "
        "200 Hz, 5-s windows, preset `eeg-fm`. Metrics from torchmetrics (balanced accuracy = macro recall; "
        "AUROC macro one-vs-rest).",
        "",
        "### Fixed split (CBraMod: subjects 0–27 train, 28–31 validation, 32–35 test)",
        "",
        f"Windows per class (rest, arithmetic): train {counts['train']}, val {counts['val']}, test {counts['test']}. "
        f"Deep models: {args.epochs} epochs (CBraMod {args.cbramod_epochs}), best validation epoch kept; "
        "classical: C chosen on validation.",
        "",
        "| method | balanced accuracy | Cohen's κ | weighted F1 | AUROC |",
        "|---|---|---|---|---|",
    ]
    for method, s in summary["fixed"].items():
        lines.append(f"| {method} | {cell(s['balanced_accuracy'])} | {cell(s['kappa'])} | {cell(s['f1_weighted'])} | {cell(s['auroc'])} |")
    if summary["cross-subject"]:
        lines += [
            "",
            f"### Cross-subject: {args.folds} subject folds, reset-tuning and within-subject few-shot",
            "",
            f"Each fold trains on the other subjects ({args.fold_epochs} epochs, no validation); every held-out "
            f"subject is scored on its data after the first {max(ADAPT_SECONDS):g} s (the same windows for every "
            f"row). Reset-tuning: {args.reset_steps} steps, lr {args.reset_lr}, calibration windows every "
            f"{args.adapt_stride} s. Mean over held-out subjects, ± std over seeds; the last column is the "
            "std across subjects (mean over seeds).",
            "",
            "| method | adaptation data | balanced accuracy | Cohen's κ | AUROC | across-subject std (BA) |",
            "|---|---|---|---|---|---|",
        ]
        for key, s in summary["cross-subject"].items():
            method, secs = key.split(" | ")
            lines.append(f"| {method} | {secs} | {cell(s['balanced_accuracy'])} | {cell(s['kappa'])} | "
                         f"{cell(s['auroc'])} | {s['balanced_accuracy_across_subjects_std']:.3f} |")
    return "\n".join(lines) + "\n" + NOTES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--protocols", nargs="+", default=["fixed", "cross-subject"], choices=["fixed", "cross-subject"])
    ap.add_argument("--store", default=None, help="shard store (default: the sample store, built on first use)")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every deep model on the fixed split")
    ap.add_argument("--cbramod-epochs", type=int, default=3, help="braindecode CBraMod is ~15x slower per epoch on CPU")
    ap.add_argument("--folds", type=int, default=4, help="subject folds of the cross-subject protocol (36 = LOSO)")
    ap.add_argument("--fold-epochs", type=int, default=8)
    ap.add_argument("--reset-steps", type=int, default=20)
    ap.add_argument("--reset-lr", type=float, default=5e-3)
    ap.add_argument("--reset-weight-decay", type=float, default=0.1)
    ap.add_argument("--adapt-stride", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-decoding")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--limit-subjects", type=int, default=None, help="held-out subjects per fold (smoke tests)")
    ap.add_argument("--render-only", action="store_true",
                    help="re-render the markdown from the runs stored in results.json (no training)")
    args = ap.parse_args()
    if args.render_only:
        payload = json.loads((args.out / "results.json").read_text())["sections"]["decoding"]
        for key, value in payload["settings"].items():
            setattr(args, key, value)
        summary = summarise(payload["runs"])
        write_section(args.out, "decoding", {k: v for k, v in payload.items() if k != "markdown"},
                      markdown(summary, args, payload["windows_per_class"], payload["command"]))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))

    probe_dm = DecodingDataModule(store=args.store, split="eegmat-cbramod", window_s=5.0, label_map=LABELS)
    probe_dm.setup()
    store = probe_dm.sets["train"].store.url
    if not has_target_set(probe_dm.sets["train"].store, 2.0):
        precompute_targets(store, 2.0)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        workdir = args.workdir / f"pretrain-seed{seed}-steps{args.pretrain_steps}"
        encoder = next(workdir.rglob("encoder.safetensors"), None) if workdir.exists() else None
        if encoder is None:
            t0 = time.perf_counter()
            workdir.mkdir(parents=True, exist_ok=True)
            encoder = pretrain("configs/pretrain/quickstart-nsp.yaml", seed, args.pretrain_steps, workdir)
            print(f"seed {seed}: pretrained {args.pretrain_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        if "fixed" in args.protocols:
            rows += fixed_protocol(store, seed, encoder, args)
        if "cross-subject" in args.protocols:
            rows += cross_subject_protocol(store, seed, encoder, args)
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    if args.no_write:
        return
    command = "python benchmarks/bench_decoding.py --seeds " + " ".join(map(str, args.seeds))
    counts = {p: probe_dm.class_counts(p).tolist() for p in ("train", "val", "test")}
    payload = {"experiment": "eegmat-decoding", "command": command, "date": args.date,
               "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "out", "store")},
               "windows_per_class": counts, "summary": summary, "runs": rows}
    write_section(args.out, "decoding", payload, markdown(summary, args, counts, command))


if __name__ == "__main__":
    main()
