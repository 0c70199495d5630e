"""The ``brainfm`` command.

* ``brainfm fit|validate|test|predict --config configs/...yaml`` — LightningCLI in
  subclass mode: the YAML names the LightningModule and DataModule classes.
* ``brainfm convert BIDS_ROOT STORE`` — BIDS to shard store (:mod:`brainfm.pipelines.convert`).
* ``brainfm info STORE [--json]`` — what a store holds.
* ``brainfm sample-data [DEST]`` — build the bundled sample dataset and store.
* ``brainfm quantize --ckpt CKPT --scheme w8a8|w4a16 --calib STORE --out BUNDLE`` — post-training
  quantization into a safetensors bundle (:mod:`brainfm.deploy`).
* ``brainfm export --ckpt CKPT --onnx OUT.onnx [--int8]`` — ONNX for onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="brainfm",
        description="Brain-signal foundation models. Training commands: "
        + ", ".join(LIGHTNING_COMMANDS)
        + " (LightningCLI; see `brainfm fit --help`).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a BIDS dataset into a shard store")
    c.add_argument("bids_root", help="root of the BIDS dataset")
    c.add_argument("store", help="output store (local path or fsspec URL)")
    c.add_argument("--preset", default="eeg-fm", help="preprocessing preset (default: eeg-fm)")
    c.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: CPUs)")
    c.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    c.add_argument("--skip-errors", action="store_true", help="exit 0 even if some recordings failed")
    c.add_argument("--report", default=None, help="also write the JSON conversion report here")
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    c.add_argument("--targets", type=float, default=None, metavar="WINDOW_S",
                   help="also precompute neurodynamics targets for windows of this length (s)")
    c.add_argument("--targets-stride", type=float, default=None, metavar="STRIDE_S",
                   help="stride of those windows (default: the window length)")

    i = sub.add_parser("info", help="summarise a shard store")
    i.add_argument("store")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("sample-data", help="build the sample BIDS dataset and store from the data root")
    s.add_argument("dest", nargs="?", default=None, help="output folder (default: ~/.cache/brainfm/sample)")
    s.add_argument("--eegmat-subjects", type=int, nargs="*", default=None, help="EEGMAT subjects (default: all 36)")
    s.add_argument("--eegbci-runs", type=int, nargs="*", default=None, help="EEGMMIDB S001 runs (default: 2-14)")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--no-progress", action="store_true")

    q = sub.add_parser("quantize", help="quantize a fine-tuned decoder into a bundle (W8A8 or W4A16)")
    q.add_argument("--ckpt", required=True, help="decoder.safetensors or a DecodeModule .ckpt")
    q.add_argument("--scheme", required=True, choices=("w8a8", "w4a16"))
    q.add_argument("--out", required=True, help="bundle directory to write")
    q.add_argument("--smoothquant", action=argparse.BooleanOptionalAction, default=None,
                   help="activation-aware scaling: SmoothQuant (w8a8, default on) / AWQ-style (w4a16, default off); "
                        "needs --calib")
    q.add_argument("--alpha", default=None, type=_alpha,
                   help="migration strength in [0, 1] or 'auto' (default: 0.5 for w8a8, auto for w4a16)")
    q.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128), help="w4a16 group size")
    e = sub.add_parser("export", help="export a fine-tuned decoder to ONNX (fp32, or int8 for onnxruntime)")
    e.add_argument("--ckpt", required=True, help="decoder.safetensors or a DecodeModule .ckpt")
    e.add_argument("--onnx", required=True, help="output .onnx file")
    e.add_argument("--int8", action="store_true", help="int8-quantize the weight GEMMs with onnxruntime")
    e.add_argument("--int8-mode", default="dynamic", choices=("dynamic", "static"),
                   help="dynamic (default) or static QDQ (needs --calib)")
    for cmd in (q, e):
        cmd.add_argument("--calib", default=None, metavar="STORE", help="shard store with calibration windows")
        cmd.add_argument("--windows", type=int, default=256, help="calibration windows (default: 256)")
        cmd.add_argument("--window-s", type=float, default=5.0, help="calibration window length in s (default: 5)")
        cmd.add_argument("--calib-subjects", nargs="+", default=None, help="subjects to calibrate on (default: all)")
        cmd.add_argument("--channel-types", nargs="+", default=None, help="keep only these channel types")
        cmd.add_argument("--batch-size", type=int, default=32)
        cmd.add_argument("--no-progress", action="store_true")
    return p


def _alpha(value: str) -> str | float:
    if value == "auto":
        return value
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"alpha must be a number in [0, 1] or 'auto', got {value!r}")
    return alpha


def _deploy(args: argparse.Namespace) -> int:
    if args.command == "quantize" and args.smoothquant is None:
        args.smoothquant = args.scheme == "w8a8"
    if args.command == "quantize" and args.smoothquant and not args.calib:
        _parser().error("quantize --smoothquant needs --calib STORE (or pass --no-smoothquant)")
    if args.command == "export" and args.int8 and args.int8_mode == "static" and not args.calib:
        _parser().error("export --int8 --int8-mode static needs --calib STORE")
    from brainfm.deploy import commands  # noqa: PLC0415

    return commands.run_quantize(args) if args.command == "quantize" else commands.run_export(args)


def _convert(args: argparse.Namespace) -> int:
    from brainfm.pipelines.convert import convert  # noqa: PLC0415

    report = convert(args.bids_root, args.store, args.preset, args.workers, args.scheduler, not args.no_progress)
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(report.to_dict(), fh, indent=1)
    print(
        f"converted {len(report.converted)}, skipped {len(report.skipped)} (up to date), "
        f"failed {len(report.failed)} in {report.seconds:.1f} s"
    )
    for f in report.failed:
        print(f"  FAILED {f['source']}: {f['error']}", file=sys.stderr)
    if args.targets is not None:
        from brainfm.pipelines.targets import precompute_targets  # noqa: PLC0415

        key = precompute_targets(args.store, args.targets, args.targets_stride, progress=not args.no_progress)
        print(f"targets: set {key!r} (use --data.init_args.target_set {key})")
    return 0 if report.ok or args.skip_errors else 1


def _info(args: argparse.Namespace) -> int:
    from brainfm.data.store import ShardStore  # noqa: PLC0415

    summary = ShardStore(args.store).summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if key == "total_hours":
            value = f"{value:.3f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key:<{width}}  {value}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from brainfm.pipelines import fetch, sample  # noqa: PLC0415

    store, report = sample.build_sample(
        args.dest,
        eegmat_subjects=args.eegmat_subjects if args.eegmat_subjects is not None else fetch.EEGMAT_SUBJECTS,
        eegbci_runs=args.eegbci_runs if args.eegbci_runs is not None else sample.EEGBCI_RUNS,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(f"sample store: {store} ({len(report.converted)} converted, {len(report.skipped)} up to date)")
    return 0 if report.ok else 1


def sample_store_path() -> str:
    """The bundled sample store, built on first use: what ``store: null`` in a config means."""
    from brainfm.pipelines.sample import sample_store  # noqa: PLC0415 - imports MNE; only when needed

    return str(sample_store())


def lightning_main(args: Sequence[str] | None) -> None:
    """LightningCLI in subclass mode over brainfm's modules and data modules.

    ``args=None`` lets LightningCLI read ``sys.argv`` itself (the console script);
    a list runs it from Python, as the tests do. A data ``store: null`` is resolved here to
    the sample store (:func:`sample_store_path`), so :mod:`brainfm.data` never imports the
    conversion pipelines.
    """
    # Lightning 2.6 uses an API jsonargparse deprecates; users cannot act on that warning.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # Deferred: importing torch and Lightning takes seconds, which `brainfm --help` and the
    # data commands do not need.
    import lightning as L  # noqa: PLC0415
    from lightning.pytorch.cli import LightningCLI  # noqa: PLC0415

    import brainfm.data.datamodule  # noqa: F401, PLC0415 - registers the classes for subclass mode
    import brainfm.tasks  # noqa: F401, PLC0415

    class BrainCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            data = config.get("data")
            init_args = data.get("init_args") if data is not None else None
            if init_args is not None and "store" in init_args and init_args.store is None:
                init_args.store = sample_store_path()

    BrainCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
    )


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainfm`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        lightning_main(None if args is None else argv)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ns = _parser().parse_args(argv)
    handler = {"convert": _convert, "info": _info, "sample-data": _sample,
               "quantize": _deploy, "export": _deploy}[ns.command]
    return handler(ns)


if __name__ == "__main__":
    sys.exit(main())
