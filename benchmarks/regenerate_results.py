"""One command regenerates ``docs/results.md`` and ``docs/results.json`` (issue #12, item 5).

Two depths::

    python benchmarks/regenerate_results.py                  # every section from its logged rows (seconds)
    python benchmarks/regenerate_results.py --rerun          # run every benchmark first (tens of hours on 2 cores)
    python benchmarks/regenerate_results.py --rerun --runs-dir runs/rerun   # ... with new runs logs: every row anew
    python benchmarks/regenerate_results.py --dry-run [--rerun]             # print what would run

Refresh (the default) rewrites, in process, the sections whose rows are kept in runs logs under
``--runs-dir`` (default ``benchmarks/notes/``, the committed logs): ``recipe`` and ``calibration``
(``bench_alignment.py --from-runs`` with the settings the section records, and its date),
``label-efficiency``, ``loso``, then the ``targets`` summary that reads them all; ``alignment``
too once a rerun has written its log. So the committed documents can be checked against the
committed rows (``tests/test_results_docs.py`` does), and a re-check on other seeds only has to
append rows and run this.

``--rerun`` first runs every benchmark behind the document, in :func:`rerun_commands` order, each
writing into ``--docs``: the sections without runs logs (``decoding``, ``probe``, ``fmri``, the
two ``pretraining`` sections) are written by their commands; the logged ones (``alignment``
included) append to ``--runs-dir``'s logs and skip the rows already there, so with the committed
logs a rerun only fills what is missing (LOSO seeds still incomplete, for example) and with an
empty ``--runs-dir`` it recomputes every row; the refreshed sections are then dated today. The
decoding benchmarks fine-tune the shipped encoders (``configs/pretrain/weights``, checked by
hash), not the ones the pretraining commands train again: those commands regenerate their own
sections only. The hand-written notes under each table (``benchmarks/notes/*.md``) are kept;
after a rerun on new rows, read them against the new tables.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

from brainfm.data.root import default_sample_dir

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
NOTES = HERE / "notes"
RECIPE_ENCODER = "configs/pretrain/weights/small-10s-seed0.safetensors"
ALIGNED_ENCODER = "configs/pretrain/weights/small-10s-aligned-seed0.safetensors"
#: The aligned recipe pretrained on each half of EEGMAT (``brainfm.pretrained.HALF_RECIPES``): LOSO's
#: two-encoder protocol, every fold fine-tuned from the half that never read its test subject.
HALF_ENCODERS = tuple(f"configs/pretrain/weights/small-10s-aligned-half-{h}-seed0.safetensors" for h in "ab")
#: The same aligned recipe pretrained again with ``--seed_everything 1``: does the label-efficiency gain
#: survive another pretraining seed? Not shipped (4 MB; ``brainfm.pretrained`` ships seed 0 as the recipe):
#: the rerun pretrains it into this folder first (about 1 h on 2 cores), then fine-tunes from its encoder.
ALIGNED_SEED1_RUN = "runs/small-10s-aligned-seed1"
#: The half-split encoders pretrained again with ``--seed_everything 1`` (not shipped, like
#: ``ALIGNED_SEED1_RUN``): LOSO from them separates the pretraining run from the subjects it read.
HALF_SEED1_RUNS = tuple(f"runs/small-10s-aligned-half-{h}-seed1" for h in "ab")
#: The aligned neurodynamics target set the aligned pretraining recipes read (about 6x slower on the fly).
ALIGNED_TARGETS = ("brainfm convert $SAMPLE_BIDS $STORE --targets 10.0 --targets-stride 5.0 "
                   "--targets-features relpow logpow hjorth plv pac indices --targets-normalize align")


def latest_fit(run: str) -> str:
    """Shell expression: the log folder of the newest fit under ``run`` (``runs/NAME``)."""
    return f"$(ls -d {run}/csv/version_* | sort -V | tail -1)"


def latest_encoder(run: str) -> str:
    """Shell expression: the encoder of the newest fit under ``run``."""
    return f"{latest_fit(run)}/encoder.safetensors"


def unshipped_encoder_step(runs: dict[str, str], label: str, log: str, bench: str) -> str:
    """Shell command for rows fine-tuned from encoders that are not shipped (``runs``: run folder -> its
    ``brainfm fit`` command). If every run folder holds an encoder, ``bench`` resumes from them (the runs
    log checks they are the ones its rows came from); else if ``log`` already has rows under ``label``, the
    step is skipped, because pretraining again need not reproduce those encoders bit for bit and the
    runs log would refuse the new ones; else the encoders are pretrained, then ``bench`` runs."""
    have = " && ".join(f"ls {run}/csv/version_*/encoder.safetensors >/dev/null 2>&1" for run in runs)
    skip = (f"echo 'skipped: {log} has rows of {label}, whose encoders are not here; pretraining again need "
            f"not reproduce them (use an empty --runs-dir to redo every row)'")
    return (f"if {have}; then {bench}; elif grep -qF {shlex.quote(label)} {log}; then {skip}; "
            f"else {' && '.join(runs.values())} && {bench}; fi")

#: The sections written from bench_alignment's runs logs: (section, runs log, notes; None: the script's own).
#: The alignment section's rows predate its runs log; a --rerun writes one.
ALIGNMENT_LOGGED = (("alignment", "alignment-runs.jsonl", None), ("recipe", "recipe-runs.jsonl", "recipe.md"),
                    ("calibration", "calibration-runs.jsonl", "calibration.md"))
#: The command text that the rerun's pretraining sections show (as the committed sections do).
PRETRAIN_COMMAND = ("brainfm convert $BRAINFM_HOME/sample/bids STORE --targets 10.0 --targets-stride 5.0 "
                    "--targets-features relpow logpow hjorth plv pac indices{normalize}; brainfm fit --config "
                    "configs/pretrain/{recipe}.yaml")
#: Settings a section records wrongly, corrected when it is replayed: the calibration rows ran with
#: --token-stats-source calibration (their command says so), but the call that wrote the section
#: from them recorded the default.
CORRECTED = {"calibration": {"token_stats_source": "calibration"}}
#: bench_alignment settings that a ``--from-runs`` call must repeat to rewrite its section as it was.
REPLAYED = ("title", "encoder_description", "epochs", "methods", "stats_source", "stats_seconds", "token_stats_source",
            "date")


def refresh_commands(runs_dir: Path, docs: Path, keep_dates: bool = True) -> list[list[str]]:
    """``[script, *argv]`` per logged section, then the targets summary (their order matters:
    the summary reads the others). ``keep_dates``: the sections keep the dates they record (a
    refresh changes no measurement); otherwise they are dated today."""
    sections = json.loads((docs / "results.json").read_text())["sections"] if (docs / "results.json").exists() else {}
    out: list[list[str]] = []
    for section, log, notes in ALIGNMENT_LOGGED:
        settings = sections.get(section, {}).get("settings")
        if settings is None or not (runs_dir / log).exists():
            print(f"{section}: no {runs_dir / log} (or no settings recorded in {docs / 'results.json'}): its "
                  "section stays as it is; --rerun writes both", file=sys.stderr)
            continue
        argv = ["bench_alignment.py", "--from-runs", str(runs_dir / log), "--section", section, "--out", str(docs),
                "--command", sections[section]["command"]] + (["--notes", str(NOTES / notes)] if notes else [])
        settings = {**settings, **CORRECTED.get(section, {})}
        for key in REPLAYED:
            if key == "date" and not keep_dates:
                continue
            value = settings.get(key)
            if value is not None:
                argv += [f"--{key.replace('_', '-')}", *(map(str, value) if isinstance(value, list) else [str(value)])]
        out.append(argv)
    for script, log, notes in (("bench_label_efficiency.py", "label-efficiency-runs.jsonl", "label-efficiency.md"),
                               ("bench_loso.py", "loso-runs.jsonl", "loso.md")):
        if (runs_dir / log).exists():
            out.append([script, "--from-runs", str(runs_dir / log), "--notes", str(NOTES / notes), "--out", str(docs)])
    out.append(["results_summary.py", "--out", str(docs)])
    return out


def rerun_commands(runs_dir: Path, docs: Path) -> list[str]:
    """Every benchmark behind docs/results.* (each writing into ``docs``), as shell commands run
    from the repository root.
    ``$STORE`` is the sample store (built on first use), ``$SAMPLE_BIDS`` the BIDS dataset it was
    converted from."""
    log = lambda name: shlex.quote(str(runs_dir / name))  # noqa: E731 - a local shorthand
    out = f"--out {shlex.quote(str(docs))}"
    align = f"python benchmarks/bench_alignment.py --store $STORE --encoder {RECIPE_ENCODER}"
    return [
        # issue #5's comparison and issue #4's probe: they write their sections themselves
        f"python benchmarks/bench_decoding.py --seeds 0 1 2 {out}",
        f"python benchmarks/probe_eegmat.py --seeds 0 1 2 --steps 1000 {out}",
        # the alignment section: the sample encoder, EEGNet at both input scales
        f"python benchmarks/bench_alignment.py --store $STORE --seeds 0 1 2 --epochs 10 --methods classical eegnet brainfm "
        f"--eegnet-epochs 10 --eegnet-input-scale 0.01 --runs-log {log('alignment-runs.jsonl')} --no-write",
        f"python benchmarks/bench_alignment.py --store $STORE --seeds 0 1 2 --methods eegnet --eegnet-input-scale 0.1 "
        f"--runs-log {log('alignment-runs.jsonl')} --no-write",
        # the recipe section: the shipped small-10s encoder
        f"{align} --methods classical brainfm --variants pretrained hybrid --normalize none align --seeds 0 1 2 --epochs 8 "
        f"--runs-log {log('recipe-runs.jsonl')} --no-write",
        f"{align} --methods brainfm --variants scratch --normalize align --seeds 0 1 2 --epochs 8 "
        f"--runs-log {log('recipe-runs.jsonl')} --no-write",
        f"{align} --methods brainfm --variants pretrained-tokens --normalize none align --seeds 0 1 2 --epochs 8 "
        f"--runs-log {log('recipe-runs.jsonl')} --no-write",
        f"{align} --methods brainfm --variants pretrained-equal-lr --normalize align none --seeds 0 --epochs 8 "
        f"--runs-log {log('recipe-runs.jsonl')} --no-write",
        # the calibration section: statistics from each subject's first 60 s
        f"{align} --methods classical brainfm --variants pretrained-tokens --normalize align --stats-source calibration "
        f"--stats-seconds 60 --token-stats-source calibration --seeds 0 1 2 --epochs 8 "
        f"--runs-log {log('calibration-runs.jsonl')} --no-write",
        # the aligned target set, which the aligned pretraining runs below read
        ALIGNED_TARGETS,
        # label efficiency: both shipped encoders against scratch
        f"python benchmarks/bench_label_efficiency.py --store $STORE --runs-log {log('label-efficiency-runs.jsonl')} "
        "--no-write",
        f"python benchmarks/bench_label_efficiency.py --store $STORE --runs-log {log('label-efficiency-runs.jsonl')} "
        f"--variants pretrained-tokens --encoder {ALIGNED_ENCODER} --encoder-label 'aligned pretraining' --no-write",
        unshipped_encoder_step(
            {ALIGNED_SEED1_RUN: "brainfm fit --config configs/pretrain/small-10s-aligned.yaml --seed_everything 1 "
             f"--trainer.default_root_dir {ALIGNED_SEED1_RUN} --trainer.logger.init_args.save_dir {ALIGNED_SEED1_RUN}"},
            "aligned pretraining, pretraining seed 1", log("label-efficiency-runs.jsonl"),
            f"python benchmarks/bench_label_efficiency.py --store $STORE --runs-log {log('label-efficiency-runs.jsonl')} "
            f"--variants pretrained-tokens --encoder {latest_encoder(ALIGNED_SEED1_RUN)} "
            "--encoder-label 'aligned pretraining, pretraining seed 1' --no-write"),
        # LOSO: classical, EEGNet and brainfm from scratch over 36 folds, then the aligned encoder on the folds
        # it never trained on
        f"python benchmarks/bench_loso.py --store $STORE --runs-log {log('loso-runs.jsonl')} --seeds 0 1 2 "
        "--methods classical eegnet brainfm --normalize align none --no-write",
        f"python benchmarks/bench_loso.py --store $STORE --runs-log {log('loso-runs.jsonl')} --seeds 0 1 2 "
        "--methods brainfm --variants pretrained-tokens --encoder " + ALIGNED_ENCODER + " --encoder-label "
        "'aligned pretraining' --folds 28 29 30 31 32 33 34 35 --no-write",
        # ... and the two half-split encoders (configs/pretrain/loso/), each on the other half's folds: all 36
        f"python benchmarks/bench_loso.py --store $STORE --runs-log {log('loso-runs.jsonl')} --seeds 3 "
        "--methods brainfm --normalize align --no-write",
        f"python benchmarks/bench_loso.py --store $STORE --runs-log {log('loso-runs.jsonl')} --seeds 0 1 2 3 "
        "--methods brainfm --variants pretrained-tokens --encoder " + " ".join(HALF_ENCODERS) + " --encoder-label "
        "'half-split aligned pretraining' --normalize align --no-write",
        # ... and both halves pretrained again with another seed, fine-tuned with seed 2
        unshipped_encoder_step(
            {run: f"brainfm fit --config configs/pretrain/small-10s-aligned.yaml --config "
                  f"configs/pretrain/loso/small-10s-aligned-half-{h}.yaml --seed_everything 1 "
                  f"--trainer.default_root_dir {run} --trainer.logger.init_args.save_dir {run}"
             for h, run in zip("ab", HALF_SEED1_RUNS)},
            "half-split aligned pretraining, encoder seed 1", log("loso-runs.jsonl"),
            f"python benchmarks/bench_loso.py --store $STORE --runs-log {log('loso-runs.jsonl')} --seeds 2 "
            "--methods brainfm --variants pretrained-tokens --encoder "
            + " ".join(latest_encoder(run) for run in HALF_SEED1_RUNS)
            + " --encoder-label 'half-split aligned pretraining, encoder seed 1' --normalize align --no-write"),
        # fMRI, one process per seed
        "for s in 0 1 2; do python benchmarks/bench_fmri.py --seed-list $s --out runs/bench_fmri_s$s.json || exit 1; "
        "done && python benchmarks/bench_fmri.py --merge runs/bench_fmri_s0.json runs/bench_fmri_s1.json "
        f"runs/bench_fmri_s2.json --out runs/bench_fmri.json --results {shlex.quote(str(docs))}",
        # the two pretraining recipes (about 1 h each), then their reports
        "brainfm convert $SAMPLE_BIDS $STORE --targets 10.0 --targets-stride 5.0 "
        "--targets-features relpow logpow hjorth plv pac indices && brainfm fit --config configs/pretrain/small-10s.yaml && "
        f"python benchmarks/pretrain_report.py {latest_fit('runs/small-10s')} --section pretraining {out} --command "
        + shlex.quote(PRETRAIN_COMMAND.format(recipe="small-10s", normalize="")),
        "brainfm convert $SAMPLE_BIDS $STORE --targets 10.0 --targets-stride 5.0 "
        "--targets-features relpow logpow hjorth plv pac indices --targets-normalize align && "
        "brainfm fit --config configs/pretrain/small-10s-aligned.yaml && python benchmarks/pretrain_report.py "
        f"{latest_fit('runs/small-10s-aligned')} --section pretraining-aligned {out} --command "
        + shlex.quote(PRETRAIN_COMMAND.format(recipe="small-10s-aligned", normalize=" --targets-normalize align"))
        + " --notes benchmarks/notes/pretraining-aligned.md",
    ]


def run_in_process(argv: list[str]) -> None:
    """Run ``benchmarks/<argv[0]>`` as ``__main__`` with ``argv[1:]``, in this process (the
    heavy imports are paid once for every section)."""
    saved = sys.argv
    sys.argv = [str(HERE / argv[0]), *argv[1:]]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rerun", action="store_true", help="run every benchmark first (tens of hours on 2 cores)")
    ap.add_argument("--runs-dir", type=Path, default=NOTES, help="folder of the runs logs (default: the committed ones)")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="folder of results.md and results.json")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args()
    if args.rerun:
        from brainfm.pipelines.sample import sample_store  # noqa: PLC0415 - imports MNE; only a rerun needs the store

        store = str(sample_store()) if not args.dry_run else "$STORE"
        if not args.dry_run:
            args.runs_dir.mkdir(parents=True, exist_ok=True)
        # `python` and `brainfm` in the commands are this environment's
        env = {**os.environ, "STORE": store, "SAMPLE_BIDS": str(default_sample_dir() / "bids"),
               "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
        for command in rerun_commands(args.runs_dir, args.docs):
            print(f"$ {command}", flush=True)
            if not args.dry_run:
                subprocess.run(command, shell=True, check=True, cwd=ROOT, executable="/bin/bash", env=env)
    sys.path.insert(0, str(HERE))  # the scripts import their siblings
    for argv in refresh_commands(args.runs_dir, args.docs, keep_dates=not args.rerun):
        print("$ python benchmarks/" + shlex.join(argv), flush=True)
        if not args.dry_run:
            run_in_process(argv)


if __name__ == "__main__":
    main()
