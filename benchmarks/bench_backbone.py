"""brainfm ``base`` encoder vs braindecode ``CBraMod`` at the same size and input.

Rows (ratio > 1 means brainfm is better):

* train-step throughput (samples/s) and peak memory, 19 ch x 30 s at 200 Hz;
* inference latency at batch 1, 19 ch x 4 s, in PyTorch eager and, for both models, exported
  to ONNX and run by onnxruntime fp32 (brainfm's deployment runtime, ``brainfm export``);
* brainfm only: train throughput and peak memory on 306-channel MEG x 10 s.

A train step is forward, a per-token ``Linear(200, 200)`` reconstruction head, MSE to the
input patches, backward and an AdamW step, in train mode. Each model runs its default
regularisation: CBraMod dropout 0.1 (residuals, feed-forward, attention probabilities),
brainfm's ``base`` preset none (see :mod:`brainfm.models.config`). Because that default is
most of the difference on CPU (both models run the same GEMMs), a second throughput row
gives brainfm CBraMod's dropout exactly.
Timings are the fastest of ``--steps`` steps (and of ``--repeats`` runs, cases alternating),
as timeit does: on a shared machine the fastest step is the least disturbed one.
Each case runs in its own subprocess so that peak memory is that case's own: on CPU the
``ru_maxrss`` delta over the case (tracemalloc misses torch's allocator), on CUDA
``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/bench_backbone.py --device cpu --batch-size 4 --steps 3 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
import warnings

SFREQ = 200.0
PATCH = 200
CASES = {
    # name: (model, n_channels, seconds, mode)
    "brainfm_train": ("brainfm", 19, 30.0, "train"),
    "brainfm_dropout_train": ("brainfm+dropout", 19, 30.0, "train"),
    "brainfm_dropout_compile_train": ("brainfm+dropout+compile", 19, 30.0, "train"),
    "cbramod_train": ("cbramod", 19, 30.0, "train"),
    "brainfm_latency": ("brainfm", 19, 4.0, "latency"),
    "brainfm_compile_latency": ("brainfm+compile", 19, 4.0, "latency"),
    "cbramod_latency": ("cbramod", 19, 4.0, "latency"),
    "brainfm_onnx_latency": ("brainfm+onnx", 19, 4.0, "latency"),
    "cbramod_onnx_latency": ("cbramod+onnx", 19, 4.0, "latency"),
    "brainfm_meg_train": ("brainfm", 306, 10.0, "train"),
}


def _inputs(torch, model: str, b: int, c: int, t: int, device: str) -> dict:
    """Synthetic batch: realistic-amplitude noise (uV / fT / fT/cm) and sensor geometry."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, t, generator=g) * 20.0
    if c == 306:  # Neuromag-like: 102 mag + 204 grad
        types = torch.tensor([1] * 102 + [2] * 204)
        x = x * torch.where(types == 1, 20.0, 3.0)[None, :, None]
        radius = 0.12
    else:
        types = torch.zeros(c, dtype=torch.long)
        radius = 0.095
    pos = torch.randn(c, 3, generator=g)
    pos = pos / pos.norm(dim=1, keepdim=True) * radius
    ori = torch.where((types > 0)[:, None], pos / radius, torch.zeros_like(pos))
    batch = {
        "x": x,
        "sensor_geometry": torch.cat([pos, ori], 1).expand(b, c, 6).contiguous(),
        "sensor_type": types.expand(b, c).contiguous(),
        "channel_mask": torch.ones(b, c, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _build(torch, model: str, c: int, t: int):
    """Model and a function ``batch -> (B, C, S, 200) features``, plus a target fn."""
    if model.startswith("brainfm"):
        from brainfm.models import BrainEncoder, ModelConfig

        # "+dropout": CBraMod's dropout 0.1 on residuals, feed-forward and attention
        p = 0.1 if "+dropout" in model else 0.0
        net = BrainEncoder(ModelConfig.from_name("base", dropout=p, attn_dropout=p))
        if "+compile" in model:  # torch.compile each block (inductor fuses dropout, residual and norm)
            for block in net.blocks:
                block.compile()

        def features(batch):
            return net(batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"])

        def target(batch):
            return net.patchify(batch["x"], batch["sensor_type"], batch["channel_mask"])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from braindecode.models import CBraMod
        net = CBraMod(n_chans=c, n_times=t, sfreq=SFREQ, n_outputs=2, patch_size=PATCH,
                      drop_prob=0.1, return_encoder_output=True)

        def features(batch):
            return net(batch["x"] / 100.0)  # CBraMod's input unit is 100 uV

        def target(batch):
            b_, c_, t_ = batch["x"].shape
            return (batch["x"] / 100.0).reshape(b_, c_, t_ // PATCH, PATCH)
    if "+onnx" in model:
        features = _onnx_features(torch, model, net, features, c, t)
    return net, features, target


def _onnx_features(torch, model: str, net, eager_features, c: int, t: int):
    """``features`` run by onnxruntime fp32 on CPU (intra-op threads = torch's).

    brainfm's encoder is exported as ``brainfm export`` ships a decoder (``export_graph``: dynamic
    batch, channels and patches, the channel mask carried into the spatial attention); CBraMod,
    whose braindecode module is built for one montage and length, at static batch-1 shapes, which
    gives onnxruntime more to simplify. Both are checked against eager before timing.
    """
    import os
    import tempfile

    import onnxruntime as ort

    from brainfm.deploy import EncoderGraph, export_graph

    batch = _inputs(torch, model, 1, c, t, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        if model.startswith("brainfm"):
            names = ["x", "sensor_geometry", "sensor_type", "channel_mask"]
            export_graph(EncoderGraph(net), net.config, path, output_name="tokens")
        else:
            class CBraModGraph(torch.nn.Module):  # x alone, scaled as ``features`` scales it
                def __init__(self):
                    super().__init__()
                    self.net = net

                def forward(self, x):
                    return eager_features({"x": x})

            names = ["x"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(CBraModGraph().eval(), (batch["x"],), dynamo=True, opset_version=20,
                                  input_names=names, verbose=False).save(path, external_data=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = eager_features(batch)
    got = torch.from_numpy(session.run(None, {k: batch[k].numpy() for k in names})[0])
    if not torch.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise RuntimeError(f"{model}: onnxruntime output differs from eager by {float((got - expected).abs().max())}")

    def features(batch):
        return session.run(None, {k: batch[k].numpy() for k in names})[0]

    return features


def _worker(case: str, device: str, batch_size: int, steps: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    model, c, seconds, mode = CASES[case]
    t = int(seconds * SFREQ)
    torch.manual_seed(0)
    net, features, target = _build(torch, model, c, t)
    net = net.to(device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if mode == "latency":
        batch = _inputs(torch, model, 1, c, t, device)
        net.eval()
        times = []
        with torch.inference_mode():
            for i in range(LATENCY_CALLS + 3):
                sync()
                t0 = time.perf_counter()
                features(batch)
                sync()
                if i >= 3:  # three warm-up calls (the compiled case compiles in the first)
                    times.append(1e3 * (time.perf_counter() - t0))
        return {"latency_ms": times}

    head = torch.nn.Linear(200, PATCH).to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = _inputs(torch, model, batch_size, c, t, device)
    net.train()

    def step():
        loss = torch.nn.functional.mse_loss(head(features(batch)), target(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocator, lazy init)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        # ru_maxrss is the high-water mark in KiB; the warm-up step already peaked once,
        # so measure against the RSS before the model and batch existed (set by the parent).
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _BASE_RSS_KIB) / 1024
    return {"samples_per_s": batch_size / times[0], "peak_mib": peak_mib}


_BASE_RSS_KIB = 0
#: Timed batch-1 calls per latency run; the parent pools them over ``--repeats`` runs.
LATENCY_CALLS = 40


def _best(results: list[dict]) -> dict:
    """Best of repeated runs for throughput and memory; latency pooled over every call of
    every run: median, and the 10th-90th percentile spread."""
    best = {}
    for key in results[0]:
        vals = [r[key] for r in results]
        if key == "latency_ms":
            pooled = sorted(t for v in vals for t in v)
            q = statistics.quantiles(pooled, n=10)
            best[key], best["latency_p10"], best["latency_p90"] = statistics.median(pooled), q[0], q[-1]
        else:
            best[key] = max(vals) if key == "samples_per_s" else min(vals)
    return best


def _run_case(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_worker", case, "--device", args.device,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.3g}"


def _row(name: str, unit: str, ours: float, anchor: float | None, higher_better: bool) -> dict:
    ratio = None
    if anchor is not None and ours > 0 and anchor > 0:
        ratio = ours / anchor if higher_better else anchor / ours
    return {"name": name, "unit": unit, "brainfm": ours, "anchor": anchor, "ratio": ratio}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4, help="train batch size")
    p.add_argument("--steps", type=int, default=3,
                   help="timed train steps / latency calls (the fastest is reported)")
    p.add_argument("--repeats", type=int, default=1, help="runs per case; the best is kept")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--cases", nargs="+", default=None, choices=list(CASES), help="run only these cases")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        global _BASE_RSS_KIB
        import torch  # noqa: F401  (count torch's own import in the baseline)

        import brainfm.models  # noqa: F401
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import braindecode.models  # noqa: F401
        _BASE_RSS_KIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(_worker(args._worker, args.device, args.batch_size, args.steps, args.threads)))
        return []

    # Alternate the cases and keep the best of --repeats runs: on a shared machine the
    # best run is the one least disturbed by other processes (as timeit does).
    onnx_cases = [c for c, spec in CASES.items() if "+onnx" in spec[0]]
    if args.device != "cpu" and args.cases and set(args.cases) & set(onnx_cases):
        p.error(f"{', '.join(onnx_cases)} run onnxruntime on CPU only; drop them or use --device cpu")
    default = [c for c in CASES if args.device == "cpu" or c not in onnx_cases]
    cases = [c for c in CASES if c in (args.cases or default)]
    runs: dict[str, list[dict]] = {case: [] for case in cases}
    for _ in range(args.repeats):
        for case in cases:
            runs[case].append(_run_case(case, args))
    res = {case: _best(r) for case, r in runs.items()}
    b = args.batch_size
    specs = [  # (name, unit, brainfm case, anchor case, key, higher is better)
        (f"train throughput, 19ch x 30s, B={b} (defaults)", "samples/s", "brainfm_train", "cbramod_train",
         "samples_per_s", True),
        ("  same, brainfm with CBraMod's dropout 0.1", "samples/s", "brainfm_dropout_train", "cbramod_train",
         "samples_per_s", True),
        ("  same dropout, brainfm blocks torch.compile'd", "samples/s", "brainfm_dropout_compile_train",
         "cbramod_train", "samples_per_s", True),
        (f"train peak memory, 19ch x 30s, B={b}", "MiB", "brainfm_train", "cbramod_train", "peak_mib", False),
        ("inference latency, B=1, 19ch x 4s (median)", "ms", "brainfm_latency", "cbramod_latency", "latency_ms", False),
        ("  same, brainfm blocks torch.compile'd", "ms", "brainfm_compile_latency", "cbramod_latency", "latency_ms",
         False),
        ("  brainfm in onnxruntime fp32 (its deploy runtime), CBraMod eager", "ms", "brainfm_onnx_latency",
         "cbramod_latency", "latency_ms", False),
        ("  equal settings: both in onnxruntime fp32", "ms", "brainfm_onnx_latency", "cbramod_onnx_latency",
         "latency_ms", False),
        (f"train throughput, MEG 306ch x 10s, B={b}", "samples/s", "brainfm_meg_train", None, "samples_per_s", True),
        (f"train peak memory, MEG 306ch x 10s, B={b}", "MiB", "brainfm_meg_train", None, "peak_mib", False),
    ]
    rows = []
    for name, unit, ours, anchor, key, higher in specs:
        if ours not in res or (anchor is not None and anchor not in res):
            continue
        row = _row(name, unit, res[ours][key], res[anchor][key] if anchor else None, higher)
        if key == "latency_ms":  # spread of every pooled call, both sides
            row["p10_p90"] = {"brainfm": [res[ours]["latency_p10"], res[ours]["latency_p90"]],
                              "anchor": [res[anchor]["latency_p10"], res[anchor]["latency_p90"]]}
        rows.append(row)
    print(f"device={args.device} batch={b} steps={args.steps} repeats={args.repeats} "
          "(anchor: braindecode CBraMod; ratio > 1: brainfm better)")
    print(f"{'row':66s} {'unit':>10s} {'brainfm':>10s} {'anchor':>10s} {'ratio':>7s}")
    for r in rows:
        print(f"{r['name']:66s} {r['unit']:>10s} {_fmt(r['brainfm']):>10s} {_fmt(r['anchor']):>10s} "
              f"{_fmt(r['ratio']):>7s}")
        if "p10_p90" in r:
            ours, anchor = r["p10_p90"]["brainfm"], r["p10_p90"]["anchor"]
            print(f"{'    p10-p90':66s} {'':>10s} {ours[0]:.3g}-{ours[1]:.3g} {anchor[0]:.3g}-{anchor[1]:.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
