"""EEGMAT, true leave-one-subject-out over all 36 subjects (issue #12, item 5).

Fold ``k`` tests on subject ``k`` alone, selects on the four subjects after it (``k+1`` …
``k+4``, modulo 36: hyperparameters and the best epoch are chosen on them, never on the
test subject) and trains on the other 31. Every fold is deterministic, so a re-run, or a
run on other seeds, sees the same splits.

Rows per fold (``--methods``):

``classical``
    log band power + logistic regression (C chosen on the fold's validation subjects) on
    the windows as stored, on z-scored + Euclidean-aligned windows (He & Wu 2019), and with
    each subject's features z-scored over its own unlabelled windows (the issue's
    reference). Deterministic: one run per fold.
``eegnet``
    braindecode EEGNet (Lawhern et al. 2018) from scratch, ``--eegnet-epochs`` epochs, best
    validation epoch kept, inputs × ``--eegnet-input-scale`` (0.1: 10-µV channels at unit
    scale, where the fixed split found it trains under every normalisation), under each
    ``--normalize`` setting, one run per seed: the deep baseline given the same alignment.
``brainfm``
    ``--variants`` of :mod:`bench_alignment` (default ``scratch-tokens``: the ``small``
    architecture from random weights with label-free token statistics, so no pretraining
    can have seen the held-out subject), fully fine-tuned ``--epochs`` epochs, best
    validation epoch kept, under each ``--normalize`` setting, one run per seed. Pretrained
    variants (``pretrained-tokens``: fine-tuned from ``--encoder``, named by ``--encoder-label``)
    run only on folds whose test subject the encoder's pretraining never trained on
    (:func:`brainfm.pretrained.trained_on`; folds 28–35 for the shipped recipes, since
    pretraining per fold costs the recipe's ~1 h of CPU 36 times per seed), and are reported
    apart, each paired with the scratch rows of the same subjects and seeds. Given several
    encoders, each fold takes the first that never trained on its test subject, preferring one
    that did not validate on it either (:func:`brainfm.pretrained.validated_on`): the two
    half-split encoders (``HALF_RECIPES``) cover all 36 folds, each on the other half's.
``reset`` (with ``brainfm``, ``--reset-seconds`` > 0)
    The fold's decoder reset-tuned on the held-out subject's first ``--reset-seconds`` of
    labelled data (:func:`brainfm.data.splits.calibration_spans`: the same fraction of each
    recording) and tested on the rest; with label-free token statistics its subject layers
    start from the statistics of those seconds (``DecodeModule(mode='reset',
    token_stats=True)``). The learning rate is chosen per fold from ``--reset-lrs`` by
    reset-tuning each validation subject the same way (never the test subject). A row of the
    same decoder without reset-tuning, on the same test windows, is the paired reference.
    Each fold's trained decoder is kept under ``--decoders``, so the reset rows can be redone
    (another grid, more seconds) without training the fold again.

Every normalisation statistic of a subject comes from that subject's own unlabelled
session (``stats_source='session'``), for the test subject too: this is the transductive
setting, and no label of the test subject is used anywhere.

Rows are appended to ``--runs-log`` as they come, and a re-run skips the (fold, method,
normalize, seed) rows already there, so an interrupted run resumes. The summary is the mean
± std over subjects (per-subject scores averaged over seeds first)::

    python benchmarks/bench_loso.py --store STORE --runs-log benchmarks/notes/loso-runs.jsonl
    python benchmarks/bench_loso.py --from-runs benchmarks/notes/loso-runs.jsonl   # section only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Montage name 'standard_1020' is deprecated")

import lightning.pytorch as pl  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402

from _results import add_section_args, collect_rows, done_keys, read_runs, write_section  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from bench_alignment import VARIANTS, brainfm_module, classical_rows, scratch_counterpart, variant_method  # noqa: E402
from bench_decoding import LABELS, METRICS, fit_test, test_only  # noqa: E402
from brainfm.data.datamodule import DecodingDataModule  # noqa: E402
from brainfm.pipelines.fetch import EEGMAT_SUBJECTS  # noqa: E402
from brainfm.pretrained import HALF_RECIPES, RECIPE_ENCODER, RECIPES, trained_on, validated_on  # noqa: E402
from brainfm.tasks import BaselineModule, DecodeModule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = [f"eegmat{i:02d}" for i in EEGMAT_SUBJECTS]
N_VAL = 4
#: The section's per-subject figure, relative to ``--out``.
FIGURE = Path("figures") / "loso_subjects.png"
#: The section's figure of pretrained against scratch, subject by subject, relative to ``--out``.
PRETRAINED_FIGURE = Path("figures") / "loso_pretrained.png"
#: Shipped encoders by the 16-hex-digit SHA-256 prefix that the runs log records.
SHIPPED = {sha[:16]: recipe for recipe, (_, sha) in (RECIPES | HALF_RECIPES).items()}


def fold_split(k: int) -> dict[str, list[str]]:
    """Test subject ``k``, validation the next four (cyclic), training the rest."""
    n = len(SUBJECTS)
    val = [SUBJECTS[(k + j) % n] for j in range(1, N_VAL + 1)]
    return {"train": [s for s in SUBJECTS if s != SUBJECTS[k] and s not in val], "val": val, "test": [SUBJECTS[k]]}


def _datamodule(store: str, split: dict[str, list[str]], normalize: str) -> DecodingDataModule:
    dm = DecodingDataModule(store=store, split=split, window_s=5.0, label_map=LABELS, batch_size=32,
                            normalize=None if normalize == "none" else normalize, stats_source="session")
    dm.setup()
    return dm


def _calibration_dm(store: str, subject: str, normalize: str, seconds: float) -> DecodingDataModule:
    """The held-out subject's first ``seconds`` (windows every 1 s) to train on, the rest to test on."""
    dm = DecodingDataModule(store=store, window_s=5.0, label_map=LABELS, batch_size=32, adapt_subjects=[subject],
                            adapt_seconds=seconds, adapt_stride_s=1.0,
                            normalize=None if normalize == "none" else normalize, stats_source="session")
    dm.setup()
    return dm


def reset_tune(decoder: Path, dm: DecodingDataModule, token_stats: bool, lr: float, steps: int, seed: int
               ) -> dict[str, float]:
    """Reset-tune ``decoder`` on ``dm``'s calibration windows (trunk and head frozen), test on the rest."""
    pl.seed_everything(seed, workers=True)
    module = DecodeModule(init_from=str(decoder), mode="reset", token_stats=token_stats, lr=lr, weight_decay=0.1)
    return fit_test(module, dm, steps=steps)[0]


def reset_rows(decoder: Path, token_stats: bool, store: str, split: dict[str, list[str]], normalize: str, seed: int,
               args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float], dict[float, float]]:
    """The fold's decoder on the test subject's post-calibration windows: as trained, and
    reset-tuned with the learning rate that does best on the validation subjects."""
    val_dms = [_calibration_dm(store, s, normalize, args.reset_seconds) for s in split["val"]]
    val_scores = {lr: float(np.mean([reset_tune(decoder, dm, token_stats, lr, args.reset_steps, seed)["balanced_accuracy"]
                                     for dm in val_dms])) for lr in args.reset_lrs}
    lr = max(args.reset_lrs, key=lambda v: val_scores[v])
    dm = _calibration_dm(store, split["test"][0], normalize, args.reset_seconds)
    plain = test_only(DecodeModule(init_from=str(decoder), mode="full", token_stats=token_stats), dm)
    return plain, reset_tune(decoder, dm, token_stats, lr, args.reset_steps, seed), val_scores


def eegnet_method(input_scale: float) -> str:
    """The runs log's method name of the EEGNet rows (the input scale is part of the setting)."""
    return f"braindecode EEGNet (scratch, input × {input_scale:g})"


def check_epochs(rows: list[dict[str, Any]], epochs: int, eegnet_epochs: int) -> None:
    """Refuse to resume a runs log whose rows were trained for other epoch counts: a resumed
    run skips rows by (subject, method, normalize, seed), so it would mix two settings."""
    for r in rows:
        want = eegnet_epochs if r["method"].startswith("braindecode EEGNet") else epochs
        if r.get("epochs", want) != want and r["seed"] is not None and " after " not in r["method"]:
            raise SystemExit(f"the runs log has {r['method']!r} rows trained for {r['epochs']} epochs, not {want}: "
                             "resume with the same epochs, or start another --runs-log")


def is_pretrained(method: str) -> bool:
    """Whether a row's method fine-tunes a pretrained encoder (its folds are restricted)."""
    return method.startswith("brainfm pretrained")


def trained_method(method: str) -> str:
    """The fold's trained decoder that a reset row's method starts from (a trained row's is itself)."""
    return method.split(", as trained")[0].split(", reset-tuned")[0]


def fold_encoders(encoders: list[Path], subjects: list[str]) -> dict[str, Path | None]:
    """Each subject's encoder: under LOSO the held-out subject must be new to every stage, so
    the first of ``encoders`` whose pretraining never trained on it
    (:func:`brainfm.pretrained.trained_on`), preferring one that never validated on it either
    (:func:`brainfm.pretrained.validated_on`); None when every encoder trained on it."""
    trained = {e: set(trained_on(e, subjects)) for e in encoders}
    validated = {e: set(validated_on(e, subjects)) for e in encoders}
    chosen: dict[str, Path | None] = {}
    for subject in subjects:
        unseen = [e for e in encoders if subject not in trained[e]]
        chosen[subject] = next((e for e in unseen if subject not in validated[e]), unseen[0] if unseen else None)
    return chosen


def check_held_out(chosen: dict[str, Path | None], folds: list[int]) -> None:
    """Refuse folds whose test subject every encoder's pretraining trained on: they would leak."""
    seen = [SUBJECTS[k] for k in folds if chosen[SUBJECTS[k]] is None]
    if seen:
        raise SystemExit(f"every --encoder was pretrained on {', '.join(seen)}: their folds would leak. Run the "
                         "pretrained variants on the folds of subjects an encoder never trained on (shipped recipes: "
                         "--folds 28 29 30 31 32 33 34 35; both half-split encoders: every fold), or pretrain "
                         "without them")


def check_encoder(rows: list[dict[str, Any]], methods: list[str], sha_of: dict[str, str | None]) -> None:
    """Refuse to resume pretrained rows of another encoder under the same method name: a
    resumed run skips rows by (subject, method, normalize, seed), so it would mix two encoders.
    ``sha_of`` is each subject's encoder hash in this run (:func:`fold_encoders`)."""
    for r in rows:
        if is_pretrained(r["method"]) and trained_method(r["method"]) in methods \
                and r.get("encoder_sha256") != sha_of.get(r["subject"]):
            raise SystemExit(f"the runs log has {r['method']!r} rows of {r['subject']} from encoder "
                             f"{r.get('encoder_sha256')}, not {sha_of.get(r['subject'])}: name these encoders with "
                             "another --encoder-label, or use another --runs-log")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.runs_log and args.runs_log.exists():
        check_epochs(read_runs(args.runs_log), args.epochs, args.eegnet_epochs)
    pretrained_variants = "brainfm" in args.methods and any(is_pretrained(VARIANTS[v]) for v in args.variants)
    chosen: dict[str, Path | None] = {s: args.encoder[0] for s in SUBJECTS}  # scratch: the architecture only
    sha_of: dict[str, str | None] = {}
    if pretrained_variants:
        chosen = fold_encoders(args.encoder, SUBJECTS)
        check_held_out(chosen, args.folds)
        digest = {e: hashlib.sha256(e.read_bytes()).hexdigest()[:16] for e in args.encoder}
        sha_of = {s: digest[e] if e else None for s, e in chosen.items()}
        if args.runs_log and args.runs_log.exists():
            check_encoder(read_runs(args.runs_log), [variant_method(v, args.encoder_label) for v in args.variants],
                          sha_of)
    done = done_keys(args.runs_log, "subject", "method", "normalize", "seed")
    rows: list[dict[str, Any]] = []

    def add(subject: str, method: str, normalize: str, seed: int | None, scores: dict, t0: float, **extra) -> None:
        rows.append({"subject": subject, "method": method, "normalize": normalize, "seed": seed,
                     **{k: scores[k] for k in METRICS}, "seconds": round(time.perf_counter() - t0, 1), **extra})
        print(json.dumps(rows[-1]), flush=True)
        if args.runs_log:
            with open(args.runs_log, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")

    classical = {("log band power + LR", "none", False), ("log band power + LR", "align", False),
                 ("log band power + LR, per-subject feature z-score", "none", True)}
    for k in args.folds:
        split, subject = fold_split(k), SUBJECTS[k]
        dms: dict[str, DecodingDataModule] = {}

        def dm_for(normalize: str) -> DecodingDataModule:
            if normalize not in dms:
                dms[normalize] = _datamodule(args.store, split, normalize)
            return dms[normalize]

        if "classical" in args.methods:
            for method, normalize, feature_z in sorted(classical):
                if (subject, method, normalize, None) in done:
                    continue
                t0 = time.perf_counter()
                add(subject, method, normalize, None, classical_rows(dm_for(normalize), normalize, feature_z), t0)
        if "eegnet" in args.methods:
            method = eegnet_method(args.eegnet_input_scale)
            for seed in args.seeds:
                for normalize in args.normalize:
                    if (subject, method, normalize, seed) in done:
                        continue
                    t0 = time.perf_counter()
                    pl.seed_everything(seed, workers=True)
                    module = BaselineModule("EEGNet", input_scale=args.eegnet_input_scale)
                    add(subject, method, normalize, seed,
                        fit_test(module, dm_for(normalize), epochs=args.eegnet_epochs, select=True)[0], t0,
                        epochs=args.eegnet_epochs)
        if "brainfm" not in args.methods:
            continue
        for seed in args.seeds:
            for normalize in args.normalize:
                for variant in args.variants:
                    method = variant_method(variant, args.encoder_label)
                    encoder = {"encoder_sha256": sha_of[subject]} if is_pretrained(method) else {}
                    reset_method = f"{method}, reset-tuned {args.reset_seconds:g} s"
                    want_reset = args.reset_seconds > 0 and (subject, reset_method, normalize, seed) not in done
                    if (subject, method, normalize, seed) in done and not want_reset:
                        continue
                    tag = f"-{sha_of[subject]}" if encoder else ""  # decoders of two encoders do not collide
                    decoder = args.decoders / f"fold{k:02d}-{variant}{tag}-{normalize}-seed{seed}.safetensors"
                    if (subject, method, normalize, seed) not in done or not decoder.is_file():
                        t0 = time.perf_counter()
                        pl.seed_everything(seed, workers=True)
                        scores, module = fit_test(brainfm_module(variant, chosen[subject]), dm_for(normalize),
                                                  epochs=args.epochs, select=True)
                        decoder.parent.mkdir(parents=True, exist_ok=True)
                        module.export_safetensors(decoder)  # the reset rows can be redone without training
                        if (subject, method, normalize, seed) not in done:
                            add(subject, method, normalize, seed, scores, t0, epochs=args.epochs, **encoder)
                    if want_reset:
                        t0 = time.perf_counter()
                        plain, tuned, val = reset_rows(decoder, variant.endswith("tokens"), args.store, split,
                                                       normalize, seed, args)
                        add(subject, f"{method}, as trained, after {args.reset_seconds:g} s", normalize, seed, plain, t0,
                            **encoder)
                        add(subject, reset_method, normalize, seed, tuned, t0, reset_lr=max(val, key=val.get),
                            reset_val={f"{k:g}": round(float(v), 4) for k, v in val.items()}, reset_steps=args.reset_steps,
                            **encoder)
    return rows


#: brainfm's LOSO method (``--variants scratch-tokens``), EEGNet's at the default input scale, and
#: the paired comparisons the section reports.
BRAINFM = VARIANTS["scratch-tokens"]
EEGNET = eegnet_method(0.1)
PAIRS = (
    ((BRAINFM, "align"), ("log band power + LR", "align")),
    ((BRAINFM, "align"), ("log band power + LR, per-subject feature z-score", "none")),
    ((BRAINFM, "align"), (EEGNET, "align")),
    ((EEGNET, "align"), ("log band power + LR", "align")),
    ((BRAINFM, "none"), ("log band power + LR", "none")),
    ((BRAINFM, "none"), (EEGNET, "none")),
    ((BRAINFM, "align"), (BRAINFM, "none")),
    ((f"{BRAINFM}, reset-tuned 60 s", "align"), (f"{BRAINFM}, as trained, after 60 s", "align")),
)


def subject_means(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, normalize): {subject: balanced accuracy averaged over the subject's seeds}}``."""
    scores: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        scores.setdefault((r["method"], r["normalize"]), {}).setdefault(r["subject"], []).append(r["balanced_accuracy"])
    return {key: {s: float(np.mean(v)) for s, v in per.items()} for key, per in scores.items()}


def paired(rows: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any] | None:
    """``a`` against ``b`` over the subjects both have (each subject's balanced accuracy averaged
    over its seeds first): mean difference, wins / ties / losses, and the two-sided Wilcoxon
    signed-rank p-value (Wilcoxon 1945). None when they share fewer than 5 subjects."""
    means = subject_means(rows)
    sa, sb = means.get(a, {}), means.get(b, {})
    common = sorted(set(sa) & set(sb))
    if len(common) < 5:
        return None
    diff = np.array([sa[s] - sb[s] for s in common])
    p = float(wilcoxon(diff, zero_method="zsplit").pvalue) if np.any(diff != 0) else 1.0
    return {"a": list(a), "b": list(b), "subjects": len(common), "mean_difference": float(diff.mean()),
            "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum()),
            "wilcoxon_p": p}


def pretrained_vs_scratch(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each pretrained (method, normalize) against its scratch counterpart
    (:func:`bench_alignment.scratch_counterpart`) on the same subjects and seeds: per seed the
    mean over subjects of each, their difference, and the subject × seed pairs won, tied and
    lost. Mean ± std are over seeds, as in the issue's "seed spreads that do not overlap"; only
    seeds paired on every subject any seed is paired on count (the others are listed as
    incomplete), so each seed's mean is over the same subjects."""
    score: dict[tuple, float] = {}
    for r in rows:
        key = (r["method"], r["normalize"], r["seed"], r["subject"])
        if key in score:
            raise SystemExit(f"the runs log has two rows for {key}: two runs wrote the same fold")
        score[key] = r["balanced_accuracy"]
    out: dict[str, dict[str, Any]] = {}
    for method, normalize in sorted({(r["method"], r["normalize"]) for r in rows if is_pretrained(r["method"])}):
        scratch = scratch_counterpart(method)
        pairs = [(seed, subject, a, score[(scratch, normalize, seed, subject)])
                 for (m, n, seed, subject), a in score.items()
                 if (m, n) == (method, normalize) and (scratch, normalize, seed, subject) in score]
        if not pairs:
            print(f"{method} ({normalize}): no scratch row of the same subject and seed to pair with ({scratch})")
            continue
        subjects = sorted({p[1] for p in pairs})
        covered = {s: {p[1] for p in pairs if p[0] == s} for s in sorted({p[0] for p in pairs})}
        seeds = [s for s, have in covered.items() if have == set(subjects)]
        pairs = [p for p in pairs if p[0] in seeds]
        if not pairs:
            continue
        pre = [float(np.mean([p[2] for p in pairs if p[0] == s])) for s in seeds]
        scr = [float(np.mean([p[3] for p in pairs if p[0] == s])) for s in seeds]
        diff = np.array([p[2] - p[3] for p in pairs])
        per_subject = {s: (float(np.mean([p[2] for p in pairs if p[1] == s])),
                           float(np.mean([p[3] for p in pairs if p[1] == s]))) for s in subjects}  # seeds averaged
        by_subject = np.array([a - b for a, b in per_subject.values()])
        out[f"{method} | {normalize}"] = {
            "scratch": scratch, "subjects": subjects, "seeds": seeds,
            "incomplete_seeds": {str(s): len(have) for s, have in covered.items() if s not in seeds},
            "balanced_accuracy": (float(np.mean(pre)), float(np.std(pre))),
            "scratch_balanced_accuracy": (float(np.mean(scr)), float(np.std(scr))),
            "per_seed": {str(s): a - b for s, a, b in zip(seeds, pre, scr)},
            "mean_difference": float(np.mean(pre) - np.mean(scr)),
            "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum()),
            "wilcoxon_p": float(wilcoxon(by_subject, zero_method="zsplit").pvalue) if np.any(by_subject != 0) else 1.0,
            "per_subject": per_subject, "by_encoder": by_encoder(rows, method, normalize, per_subject)}
    return out


def by_encoder(rows: list[dict[str, Any]], method: str, normalize: str,
               per_subject: dict[str, tuple[float, float]]) -> dict[str, dict[str, Any]]:
    """``per_subject``'s (pretrained, scratch) pairs grouped by the encoder each subject's fold started from
    (the runs log's ``encoder_sha256``; a shipped encoder is named by its recipe): with several encoders,
    whether pretraining helps can differ from one encoder to the next."""
    sha = {r["subject"]: r.get("encoder_sha256", "unrecorded") for r in rows
           if (r["method"], r["normalize"]) == (method, normalize)}
    out: dict[str, dict[str, Any]] = {}
    for key in sorted({sha[s] for s in per_subject}):
        subjects = [s for s in per_subject if sha[s] == key]
        diff = np.array([per_subject[s][0] - per_subject[s][1] for s in subjects])
        out[SHIPPED.get(key, key)] = {"sha256": key, "subjects": subjects, "mean_difference": float(diff.mean()),
                                      "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
                                      "losses": int((diff < 0).sum())}
    return out


def plot_pretrained(encoders: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per pretrained row of :func:`pretrained_vs_scratch`: each subject's scratch score against
    its pretrained score (seeds averaged), coloured by the encoder its fold started from. Points above
    the diagonal are subjects that pretraining helped; the dashed line is the issue's +0.03. Reset rows
    are left to the tables."""
    encoders = {k: e for k, e in encoders.items() if trained_method(k.split(" | ")[0]) == k.split(" | ")[0]}
    if not encoders:  # reset rows only
        return
    fig, axes = plt.subplots(1, len(encoders), figsize=(5.2 * len(encoders), 5.2), squeeze=False)
    for ax, (key, e) in zip(axes[0], encoders.items()):
        for name, group in e["by_encoder"].items():
            xy = np.array([e["per_subject"][s] for s in group["subjects"]])  # (subjects, 2): pretrained, scratch
            ax.scatter(xy[:, 1], xy[:, 0], alpha=0.8,
                       label=f"{name}: {group['mean_difference']:+.3f} over {len(group['subjects'])} subjects")
            for s, (pre, scr) in zip(group["subjects"], xy):
                ax.annotate(s.removeprefix("eegmat"), (scr, pre), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.plot([0, 0.97], [0.03, 1], color="grey", linewidth=0.8, linestyle="--")
        method, normalize = key.split(" | ")
        label = method.removeprefix("brainfm pretrained ").split(" + ")[0]
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), aspect="equal", xlabel="scratch (balanced accuracy)",
               ylabel="pretrained (balanced accuracy)",
               title=f"{label}, {normalize}: {e['mean_difference']:+.3f}\n(seeds {', '.join(map(str, e['seeds']))})")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("EEGMAT leave-one-subject-out: pretrained against scratch, subject by subject", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pretrained_markdown(encoders: dict[str, dict[str, Any]]) -> list[str]:
    """The section's table of pretrained rows against scratch (:func:`pretrained_vs_scratch`)."""
    def cell(v) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    lines = ["", "Pretrained encoders, only on the folds whose test subject their pretraining never trained on "
             "(`brainfm.pretrained.trained_on` refuses the other folds; the shipped recipe encoders trained on EEGMAT "
             "0–27 and other sample recordings, so folds 28–35; the two half-split encoders trained on EEGMAT 00–15 "
             "and 18–33, each used on the other half's folds, so all 36). Each is paired with the scratch rows of "
             "the same subjects and seeds; mean ± std over seeds of the mean over those subjects:", "",
             "| method | normalize | subjects | seeds | pretrained | scratch | pretrained − scratch, per seed | "
             "subject × seed pairs better / equal / worse | Wilcoxon p (per subject, seeds averaged) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, e in encoders.items():
        method, normalize = key.split(" | ")
        subjects = ", ".join(s.removeprefix("eegmat") for s in e["subjects"])
        per_seed = ", ".join(f"{d:+.3f}" for d in e["per_seed"].values())
        seeds = ", ".join(map(str, e["seeds"])) + "".join(
            f" (seed {s}: {n} of {len(e['subjects'])} subjects so far, not counted)"
            for s, n in e.get("incomplete_seeds", {}).items())
        lines.append(f"| {method} | {normalize} | {subjects} | {seeds} | "
                     f"{cell(e['balanced_accuracy'])} | {cell(e['scratch_balanced_accuracy'])} | "
                     f"{per_seed} (mean {e['mean_difference']:+.3f}) | {e['wins']} / {e['ties']} / {e['losses']} | "
                     f"{e['wilcoxon_p']:.2g} |")
    lines += ["", "The same pairs by the encoder each fold started from (seeds averaged per subject):", "",
              "| method | normalize | encoder (SHA-256 prefix) | subjects | pretrained − scratch | better / equal / worse |",
              "|---|---|---|---|---|---|"]
    for key, e in encoders.items():
        method, normalize = key.split(" | ")
        for name, g in e["by_encoder"].items():
            subjects = ", ".join(s.removeprefix("eegmat") for s in g["subjects"])
            lines.append(f"| {method} | {normalize} | {name} ({g['sha256']}) | {subjects} | "
                         f"{g['mean_difference']:+.3f} | {g['wins']} / {g['ties']} / {g['losses']} |")
    lines += ["", f"![Pretrained against scratch, subject by subject]({PRETRAINED_FIGURE.as_posix()})"]
    return lines


#: Rows drawn per subject in the section's figure: (method, normalize, label, marker).
PLOTTED = (
    (f"{BRAINFM}, reset-tuned 60 s", "align", "brainfm, aligned, reset-tuned on the first 60 s (scored after them)", "^"),
    (BRAINFM, "align", "brainfm, aligned, no labels", "o"),
    (EEGNET, "align", "EEGNet, aligned", "s"),
    ("log band power + LR, per-subject feature z-score", "none", "log band power + LR, feature z-score", "D"),
    ("log band power + LR", "align", "log band power + LR, aligned", "x"),
)


def plot_subjects(rows: list[dict[str, Any]], path: Path) -> None:
    """Each subject's balanced accuracy (its seeds averaged) under the :data:`PLOTTED` rows,
    subjects sorted by brainfm aligned without labels."""
    means = subject_means(rows)
    anchor = means.get((BRAINFM, "align"), {})
    order = sorted(SUBJECTS, key=lambda s: anchor.get(s, -1.0))
    fig, ax = plt.subplots(figsize=(11, 5))
    for method, normalize, label, marker in PLOTTED:
        scores = means.get((method, normalize), {})
        xs = [i for i, s in enumerate(order) if s in scores]
        if xs:
            ax.plot(xs, [scores[order[i]] for i in xs], marker=marker, linestyle="none", alpha=0.8,
                    label=f"{label} ({len(xs)} subjects)")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(0.8, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(order)), [s.removeprefix("eegmat") for s in order], fontsize=7)
    ax.set(xlabel="held-out subject (sorted by brainfm, aligned, no labels)", ylabel="balanced accuracy",
           ylim=(0, 1.02), title="EEGMAT leave-one-subject-out: each held-out subject")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def logged_epochs(rows: list[dict[str, Any]], prefix: str, default: int) -> int:
    """The epochs the rows of methods starting with ``prefix`` were trained for (rows logged
    before the runs log kept them: ``default``)."""
    found = {r["epochs"] for r in rows if r["method"].startswith(prefix) and "epochs" in r}
    if len(found) > 1:
        raise SystemExit(f"{prefix} rows trained for different epochs {sorted(found)}: split the runs log")
    return found.pop() if found else default


def complete_runs(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``rows`` into the runs — (method, normalize, seed) — that cover every subject any
    run covers, and those still incomplete: a seed stopped part-way (the runs log resumes it)
    is not averaged with complete seeds over a different set of subjects."""
    groups: dict[tuple, set[str]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["normalize"], r["seed"]), set()).add(r["subject"])
    everyone = set().union(*groups.values()) if groups else set()
    whole = [r for r in rows if groups[(r["method"], r["normalize"], r["seed"])] == everyone]
    return whole, [r for r in rows if groups[(r["method"], r["normalize"], r["seed"])] != everyone]


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± std over subjects of each (method, normalize); seeds averaged within a subject first."""
    per_subject: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        per_subject.setdefault(f"{r['method']} | {r['normalize']}", {}).setdefault(r["subject"], []).append(r)
    out = {}
    for key, subjects in per_subject.items():
        means = {k: [float(np.mean([r[k] for r in rs])) for rs in subjects.values()] for k in METRICS}
        seeds = sorted({r["seed"] for rs in subjects.values() for r in rs if r["seed"] is not None})
        out[key] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in means.items()} | {
            "n_subjects": len(subjects), "seeds": seeds,
            "at_least_0.80": int(sum(v >= 0.80 for v in means["balanced_accuracy"]))}
    return out


def markdown(summary: dict[str, Any], command: str, date: str, epochs: int, eegnet_epochs: int, notes: str = "",
             partial: dict[str, Any] | None = None, pairs: list[dict[str, Any]] | None = None,
             encoders: dict[str, dict[str, Any]] | None = None) -> str:
    def cell(v) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    lines = [
        "## EEGMAT, leave-one-subject-out over 36 subjects (issue #12, item 5)",
        "",
        f"Command: `{command}` (2-core CPU, no GPU; {date}). Fold k tests on subject k alone, chooses C or the best "
        "epoch on the 4 subjects after it (cyclic) and trains on the other 31. 19 EEG channels, 200 Hz, 5-s "
        "windows; normalisation statistics from each subject's own unlabelled session (transductive, no test "
        "label used). brainfm rows: the `small` architecture of `configs/pretrain/small-10s.yaml` from random "
        f"weights (no pretraining, so nothing saw the held-out subject), full fine-tune {epochs} epochs. braindecode "
        f"EEGNet rows: from scratch, {eegnet_epochs} epochs, best validation epoch kept. Mean ± std over subjects; "
        "seeds averaged within a subject first.",
        "",
        "| method | normalize | subjects | seeds | balanced accuracy | subjects ≥ 0.80 | Cohen's κ | weighted F1 | AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        method, normalize = key.split(" | ")
        seeds = ", ".join(map(str, s["seeds"])) or "-"
        lines.append(f"| {method} | {normalize} | {s['n_subjects']} | {seeds} | {cell(s['balanced_accuracy'])} | "
                     f"{s['at_least_0.80']} | {cell(s['kappa'])} | {cell(s['f1_weighted'])} | {cell(s['auroc'])} |")
    if partial:
        lines += ["", "Runs still incomplete (the runs log resumes them), each on the subjects it has so far; rows "
                  "with the same subjects are paired:", "",
                  "| method | normalize | subjects | seeds | balanced accuracy | subjects ≥ 0.80 | AUROC |",
                  "|---|---|---|---|---|---|---|"]
        for key, s in partial.items():
            method, normalize = key.split(" | ")
            lines.append(f"| {method} | {normalize} | {s['n_subjects']} of 36 | {', '.join(map(str, s['seeds']))} | "
                         f"{cell(s['balanced_accuracy'])} | {s['at_least_0.80']} | {cell(s['auroc'])} |")
    if encoders:
        lines += pretrained_markdown(encoders)
    lines += ["", f"![Each held-out subject's balanced accuracy]({FIGURE.as_posix()})"]
    if pairs:
        lines += ["", "Paired over subjects (complete and incomplete runs; each subject's seeds averaged first; "
                  "two-sided Wilcoxon signed-rank test, ties split):", "",
                  "| A | B | subjects | A − B | A better / equal / worse | p |", "|---|---|---|---|---|---|"]
        for q in pairs:
            lines.append(f"| {q['a'][0]} ({q['a'][1]}) | {q['b'][0]} ({q['b'][1]}) | {q['subjects']} | "
                         f"{q['mean_difference']:+.3f} | {q['wins']} / {q['ties']} / {q['losses']} | {q['wilcoxon_p']:.2g} |")
    return "\n".join(lines) + "\n" + (f"\n{notes}" if notes else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="the sample store (brainfm sample-data), all 36 EEGMAT subjects")
    ap.add_argument("--folds", type=int, nargs="+", default=list(range(len(SUBJECTS))), help="test subject indices")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=["classical", "eegnet", "brainfm"],
                    choices=["classical", "eegnet", "brainfm"])
    ap.add_argument("--variants", nargs="+", default=["scratch-tokens"], choices=list(VARIANTS))
    ap.add_argument("--normalize", nargs="+", default=["align"], choices=["none", "zscore", "align"])
    ap.add_argument("--epochs", type=int, default=8, help="brainfm fine-tuning epochs")
    ap.add_argument("--eegnet-epochs", type=int, default=10, help="braindecode EEGNet epochs")
    ap.add_argument("--eegnet-input-scale", type=float, default=0.1, help="EEGNet's inputs (µV) are multiplied by it")
    ap.add_argument("--reset-seconds", type=float, default=60.0,
                    help="labelled seconds of the held-out subject for the reset-tuned rows (0: none)")
    ap.add_argument("--reset-steps", type=int, default=20)
    ap.add_argument("--decoders", type=Path, default=ROOT / "runs" / "loso-decoders",
                    help="each fold's trained decoder is kept here, so reset rows are redone without training")
    ap.add_argument("--reset-lrs", type=float, nargs="+", default=[1e-2, 3e-2, 1e-1],
                    help="reset-tuning learning rates, chosen per fold on the validation subjects")
    ap.add_argument("--encoder-label", default=None,
                    help="name of --encoder in the pretrained rows' method, e.g. 'aligned pretraining'")
    ap.add_argument("--encoder", type=Path, nargs="+", default=[RECIPE_ENCODER],
                    help="weights files: the first is the architecture of scratch variants; pretrained variants "
                         "start each fold from the first that never pretrained on its test subject")
    add_section_args(ap, ROOT / "docs")
    args = ap.parse_args()
    if not (args.from_runs or args.store):
        ap.error("--store is needed unless --from-runs is given")
    rows = collect_rows(args, run)
    encoders, pretrained = pretrained_vs_scratch(rows), [r for r in rows if is_pretrained(r["method"])]
    rows = [r for r in rows if not is_pretrained(r["method"])]  # their folds are restricted by design
    for key, e in encoders.items():
        print(f"{key} on {len(e['subjects'])} subjects: {e['balanced_accuracy'][0]:.3f} against scratch "
              f"{e['scratch_balanced_accuracy'][0]:.3f} ({e['mean_difference']:+.3f})")
    epochs = logged_epochs(rows, "brainfm", args.epochs), logged_epochs(rows, "braindecode EEGNet", args.eegnet_epochs)
    pairs = [q for a, b in PAIRS if (q := paired(rows, a, b))]
    if not args.no_write:
        plot_subjects(rows, args.out / FIGURE)
        if encoders:
            plot_pretrained(encoders, args.out / PRETRAINED_FIGURE)
    rows, incomplete = complete_runs(rows)
    partial = summarise(incomplete)
    for key, p in partial.items():
        print(f"incomplete: {key} ({p['n_subjects']} subjects): {p['balanced_accuracy'][0]:.3f}")
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    if args.no_write:
        return
    command = ("python benchmarks/bench_loso.py --store STORE --runs-log benchmarks/notes/loso-runs.jsonl"
               f" --epochs {epochs[0]} --eegnet-epochs {epochs[1]}")
    date = time.strftime("%Y-%m-%d")
    write_section(args.out, "loso", {"experiment": "eegmat-loso", "command": command, "date": date,
                                     "summary": summary, "runs": rows, "incomplete": {"summary": partial, "runs": incomplete},
                                     "paired": pairs, "pretrained": {"summary": encoders, "runs": pretrained}},
                  markdown(summary, command, date, *epochs, args.notes.read_text() if args.notes else "", partial, pairs,
                           encoders))


if __name__ == "__main__":
    main()
