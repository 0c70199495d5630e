"""Quantized deployment on CPU: onnxruntime int8 vs PyTorch fp32 (the anchor), latency and size.

For each preset (``tiny``, ``small``, ``base``; random-init decoders with 2 classes, which
is enough for latency and size) the script

* times one 19-channel x 4-s window (800 samples at 200 Hz) at batch 1 through PyTorch fp32
  eager (``inference_mode``; the anchor), onnxruntime fp32, onnxruntime int8 dynamic
  (the ``brainfm export --int8`` default) and int8 static QDQ (calibrated on synthetic
  windows; fine for timing), all with the same number of intra-op threads. Cases run in
  interleaved rounds and each reports its median over all rounds, so a load spike on a
  shared machine hits every case alike;
* compares file sizes: int8 ONNX vs the fp32 ``decoder.safetensors`` (what ``fit`` writes),
  and brainfm's own W8A8 / W4A16 bundles (``brainfm quantize``) vs the same file.

Rows (``ratio > 1`` means the quantized side is better: faster, or smaller)::

    python benchmarks/bench_deploy.py --threads 1 --rounds 40 --json deploy.json
    python benchmarks/bench_deploy.py --presets --accuracy-store STORE   # accuracy rows only

``--accuracy-store`` adds accuracy rows on real EEGMAT windows: the decoder of
``tests/test_deploy.py`` (``tiny`` fine-tuned on eegmat00/01; or ``--ckpt``), calibrated on
128 windows of eegmat00/01, scored on eegmat32 (windows every second) against fp32:
balanced accuracy, and logits SQNR of activation-aware scaling vs round-to-nearest.

The issue's targets: onnxruntime int8 >= 2x faster than PyTorch fp32, size <= 0.3x fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _eegmat import report, row

from brainfm.deploy import export_onnx, onnx_session, quantize, quantize_onnx, save_bundle
from brainfm.deploy.export import INPUT_NAMES, example_inputs
from brainfm.models import BrainDecoder, ModelConfig, save_decoder

PRESETS = ("tiny", "small", "base")
LABELS = {"rest": 0, "arithmetic": 1}
CALIB_SUBJECTS = ["eegmat00", "eegmat01"]


def _timer(fn, warmup: int = 3):
    for _ in range(warmup):
        fn()

    def once() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return once


def _size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def bench_preset(name: str, threads: int, rounds: int, workdir: Path) -> list[dict]:
    torch.manual_seed(0)
    decoder = BrainDecoder(ModelConfig.from_name(name), 2).eval()
    save_decoder(decoder, workdir / f"{name}.safetensors")
    export_onnx(decoder, workdir / f"{name}.onnx")
    calib = [dict(zip(INPUT_NAMES, example_inputs(decoder.config, batch=8, seed=s))) for s in range(4)]
    quantize_onnx(workdir / f"{name}.onnx", workdir / f"{name}.dyn.onnx", "dynamic")
    quantize_onnx(workdir / f"{name}.onnx", workdir / f"{name}.qdq.onnx", "static", calib, 32)
    for scheme in ("w8a8", "w4a16"):
        save_bundle(quantize(decoder, scheme, smoothquant=False), workdir / f"{name}.{scheme}")

    x = example_inputs(decoder.config, batch=1, n_channels=19, seconds=4.0, seed=1)
    feeds = dict(zip(INPUT_NAMES, (t.numpy() for t in x)))
    files = {"fp32": f"{name}.onnx", "dyn": f"{name}.dyn.onnx", "qdq": f"{name}.qdq.onnx"}
    sessions = {k: onnx_session(workdir / f, threads) for k, f in files.items()}

    def torch_fp32():
        with torch.inference_mode():
            decoder(*x)

    cases = {"pytorch_fp32": _timer(torch_fp32)}
    for key, sess in sessions.items():
        cases[f"ort_{key}"] = _timer(lambda s=sess: s.run(None, feeds))
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):  # interleaved: every case sees the same machine load
        for key, once in cases.items():
            times[key].append(once())
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    st = _size_mib(workdir / f"{name}.safetensors")
    lat = f"{name} latency ({threads} thr), ORT"
    size = f"{name} size,"
    return [
        row(f"{lat} int8 dynamic vs torch fp32", "ms", ms["ort_dyn"], ms["pytorch_fp32"], False),
        row(f"{lat} int8 static QDQ vs torch fp32", "ms", ms["ort_qdq"], ms["pytorch_fp32"], False),
        row(f"{lat} fp32 vs torch fp32", "ms", ms["ort_fp32"], ms["pytorch_fp32"], False),
        row(f"{lat} int8 dynamic vs ORT fp32", "ms", ms["ort_dyn"], ms["ort_fp32"], False),
        row(f"{size} int8 ONNX dynamic vs fp32 safetensors", "MiB", _size_mib(workdir / files["dyn"]), st, False),
        row(f"{size} int8 ONNX QDQ vs fp32 safetensors", "MiB", _size_mib(workdir / files["qdq"]), st, False),
        row(f"{size} W8A8 bundle vs fp32 safetensors", "MiB", _size_mib(workdir / f"{name}.w8a8"), st, False),
        row(f"{size} W4A16 g64 bundle vs fp32 safetensors", "MiB", _size_mib(workdir / f"{name}.w4a16"), st, False),
    ]


def finetune_tiny(store: str, workdir: Path) -> Path:
    """The decoder of ``tests/test_deploy.py``: ``tiny``, 10 epochs on eegmat00/01; returns its file."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from brainfm.data.datamodule import DecodingDataModule
    from brainfm.tasks.decode import DecodeModule

    L.seed_everything(0, verbose=False)
    dm = DecodingDataModule(store=store, split={"train": CALIB_SUBJECTS, "val": ["eegmat28"], "test": ["eegmat32"]},
                            label_map=LABELS, batch_size=16, stride_s=2.5)
    module = DecodeModule(model="tiny", mode="full", lr=3e-3, head_dropout=0.0)
    trainer = L.Trainer(max_epochs=10, logger=CSVLogger(workdir, name="fit"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=workdir)
    trainer.fit(module, dm)
    return Path(trainer.log_dir) / "decoder.safetensors"  # written by DecodeModule at the end of fit


def accuracy_rows(ckpt: Path, store: str, test_subjects: list[str], windows: int, workdir: Path) -> list[dict]:
    """fp32 vs quantized on real windows: balanced accuracy (%) and logits SQNR (dB).

    Scored on ``test_subjects`` (windows every second) and on the training subjects' own
    windows, where a fine-tuned decoder is well above chance and flipped decisions show.
    """
    import numpy as np

    from brainfm.data import EntityLabels, FixedWindows, ShardStore, collate_windows
    from brainfm.deploy import calibrate, calibration_batches, load_checkpoint, run_onnx
    from brainfm.deploy.calibrate import decoder_inputs
    from brainfm.kernels.reference import sqnr_db

    def logits(model, batches: list[dict]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(*decoder_inputs(b)) for b in batches])

    def bacc(lg: torch.Tensor, y: torch.Tensor) -> float:
        return 100 * float(np.mean([(lg.argmax(1)[y == c] == c).float().mean() for c in y.unique()]))

    decoder = load_checkpoint(ckpt)
    calib = list(calibration_batches(store, windows, 5.0, subjects=CALIB_SUBJECTS))
    stats = calibrate(decoder, calib, windows)
    models = {f"{scheme}{'' if sq else ' RTN'}": quantize(decoder, scheme, stats=stats, smoothquant=sq)
              for scheme in ("w8a8", "w4a16") for sq in (True, False)}
    export_onnx(decoder, workdir / "acc.onnx")
    for mode in ("dynamic", "static"):
        quantize_onnx(workdir / "acc.onnx", workdir / f"acc.{mode}.onnx", mode, calib, windows)
        session = onnx_session(workdir / f"acc.{mode}.onnx")
        models[f"ORT int8 {mode}"] = lambda *x, s=session: run_onnx(s, *x)
    st = ShardStore(store)
    rows = []
    for subjects, stride in ((test_subjects, 1.0), (CALIB_SUBJECTS, 5.0)):
        ds = FixedWindows(st, 5.0, stride, st.select(subjects), EntityLabels("task", LABELS))
        batches = list(torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=collate_windows))
        y = torch.cat([b["label"] for b in batches])
        ref = logits(decoder, batches)
        out = {k: logits(m, batches) for k, m in models.items()}
        tag = f"{'+'.join(subjects)} ({len(y)} win)"
        rows += [row(f"bal. acc. {tag}, {k} vs fp32", "%", bacc(v, y), bacc(ref, y)) for k, v in out.items()]
        rows += [row(f"logits SQNR {tag}, {k}: scaled vs RTN", "dB", sqnr_db(ref, out[k]),
                     sqnr_db(ref, out[f"{k} RTN"])) for k in ("w8a8", "w4a16")]
        rows.append(row(f"logits SQNR {tag}, ORT int8: static vs dynamic", "dB",
                        sqnr_db(ref, out["ORT int8 static"]), sqnr_db(ref, out["ORT int8 dynamic"])))
        agree = {k: float((v.argmax(1) == ref.argmax(1)).float().mean()) for k, v in out.items()}
        print(f"{tag}: prediction agreement with fp32:", ", ".join(f"{k} {a:.4f}" for k, a in agree.items()))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="*", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and onnxruntime")
    p.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds (median reported)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--accuracy-store", default=None, metavar="STORE",
                   help="also compare accuracy on EEGMAT windows of this store (needs eegmat00/01/28/32)")
    p.add_argument("--ckpt", default=None, help="decoder to evaluate (default: fine-tune tiny as tests/test_deploy.py)")
    p.add_argument("--test-subjects", nargs="+", default=["eegmat32"])
    p.add_argument("--calib-windows", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["TRITON_INTERPRET"] = "0"  # CPU reference kernels, not the Triton interpreter
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            rows += bench_preset(name, args.threads, args.rounds, Path(tmp))
        if args.accuracy_store:
            ckpt = Path(args.ckpt) if args.ckpt else finetune_tiny(args.accuracy_store, Path(tmp))
            rows += accuracy_rows(ckpt, args.accuracy_store, args.test_subjects, args.calib_windows, Path(tmp))
    print(f"one 19-channel x 4-s window (800 samples), batch 1, {args.threads} intra-op thread(s), "
          f"median of {args.rounds} interleaved rounds; ratio > 1: quantized side faster / smaller")
    report(rows, "fp32", args.json)
    return rows


if __name__ == "__main__":
    main()
