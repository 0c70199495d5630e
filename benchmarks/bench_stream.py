"""Live detector latency, CPU and memory on a replayed LSL stream, against braindecode CBraMod's forward.

Usage::

    python benchmarks/bench_stream.py [--models tiny small base] [--precisions fp32 int8] \\
        [--soak-s 60] [--subject 33] [--threads 1] [--json stream.json]

What runs: mne-lsl's ``PlayerLSL`` replays EEGMAT subject ``--subject`` (rest then arithmetic,
looped, 500 Hz, its 19 EEG channels plus ``A2-A1`` and ECG, which the channel mapping drops) in
``--chunk`` samples per push from a *separate process*, on loopback. This process runs
``brainfm.live.LiveDetector`` (StreamLSL, causal chain, 4-s windows, hop 0.5 s, quality gate,
indices, the decoder on the engagement axis, states, HMM) for ``--soak-s`` seconds per
configuration, with the per-user baseline taken beforehand from the first 60 s of the
subject's rest file (every soak window is a full decision). Decoders are *randomly
initialised* (seeded) ``tiny``/``small``/``base`` presets with two classes: latency does not
depend on the weights. ``fp32`` runs the decoder in PyTorch; ``int8`` runs the ONNX export
quantized by onnxruntime (``brainfm export --int8``: dynamic, 7-bit weights).

Measured per configuration (the first ``--warmup-s`` of the soak left out):

* ``compute per hop``: :meth:`AttentionDetector.step` of one window (gate, resample, indices,
  decoder, states, HMM), p50 / p99, wall clock and the thread's CPU time (``time.thread_time``:
  what the step costs, less sensitive than the wall clock to other jobs on a shared machine);
* ``end-to-end``: from the LSL timestamp of the window's last sample to the moment its state is
  handed to the sinks (``local_clock()``), p50 / p99. PlayerLSL stamps a chunk with the time of
  its *last* sample and pushes it when its first sample is due, so a replay reads up to one
  chunk (``--chunk`` / 500 Hz) *lower* than an amplifier that sends a chunk once it is complete;
* ``decoder forward``: the engagement model alone on the same window shape;
* CPU % of one core (this process: detector, StreamLSL's acquisition thread, the sinks), the
  same as CPU time per published window, and RSS sampled every second, with its growth over
  the soak (flat memory);
* mne-lsl's own pull overhead: ``StreamLSL.get_data()`` per poll, p50 / p99.

Anchor: braindecode ``CBraMod`` (``n_chans=19, n_times=800``, patch 200, fp32, batch 1, the
same input shape, input in units of 100 µV), its forward timed in this process just before
every soak, interleaved call by call with the brainfm decoder's forward (wall clock and CPU
time); CPU-time rows compare CPU times on both sides. ``--json`` rows are
``{"name", "unit", "brainfm", "anchor", "ratio"}`` with ratio > 1 when brainfm is better; rows
without an anchor (CPU, RSS, the pull) carry ``null`` anchor and ratio. The end-to-end rows'
anchor is the issue's target (hop + 20 ms), named so in the row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import mne
import numpy as np
import torch

from brainfm.attention import AttentionDetector, DetectorConfig, EngagementModel, read_session
from brainfm.data.root import data_root
from brainfm.deploy import export_onnx, quantize_onnx
from brainfm.live import LiveDetector, check_stream, open_stream
from brainfm.models import BrainDecoder, ModelConfig, save_decoder

CLASSES = ["rest", "arithmetic"]
SFREQ_MODEL = 200
PATCH = 200


# ---------------------------------------------------------------- the replay (child process)

def replay_raw(subject: int) -> mne.io.BaseRaw:
    """EEGMAT rest then arithmetic of one subject as one Raw in volts (EDF channel names)."""
    root = data_root() / "eegmat"
    raws = [mne.io.read_raw_edf(root / f"Subject{subject:02d}_{k}.edf", preload=True, verbose="error") for k in (1, 2)]
    raw = mne.concatenate_raws(raws, verbose="error")
    raw.set_channel_types({"ECG ECG": "ecg"}, verbose="error")
    raw.set_annotations(None)
    return raw


def play(name: str, subject: int, chunk: int) -> None:
    """Child process: loop the session on LSL until killed."""
    from mne_lsl.player import PlayerLSL  # noqa: PLC0415 - only the child process plays

    PlayerLSL(replay_raw(subject), chunk_size=chunk, n_repeat=np.inf, name=name, source_id=name).start()
    while True:
        time.sleep(1.0)


# ---------------------------------------------------------------- models

def model_file(workdir: Path, preset: str, precision: str) -> Path:
    """A seeded, untrained decoder of ``preset``: safetensors (fp32) or dynamic int8 ONNX."""
    fp32 = workdir / f"{preset}-fp32.safetensors"
    if not fp32.exists():
        torch.manual_seed(0)
        decoder = BrainDecoder(ModelConfig.from_name(preset, dropout=0.0), n_classes=2, classes=CLASSES).eval()
        save_decoder(decoder, fp32)
    if precision == "fp32":
        return fp32
    int8 = workdir / f"{preset}-int8.onnx"
    if not int8.exists():
        decoder = EngagementModel(fp32).model
        float_onnx = workdir / f"{preset}-fp32.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(decoder, float_onnx)
            quantize_onnx(float_onnx, int8, "dynamic")
    return int8


def cbramod_anchor(n_chans: int, n_times: int) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from braindecode.models import CBraMod  # noqa: PLC0415 - braindecode is slow to import; anchor only
    torch.manual_seed(0)
    return CBraMod(n_chans=n_chans, n_times=n_times, sfreq=SFREQ_MODEL, n_outputs=2, patch_size=PATCH).eval()


def forward_times(model: EngagementModel, anchor: torch.nn.Module, spec, reps: int) -> dict[str, list]:
    """Batch-1 forward times (ms) of the brainfm decoder and the anchor, interleaved call by call:
    wall clock, and this thread's CPU time (less sensitive to other jobs on a shared machine)."""
    rng = np.random.default_rng(0)
    times: dict[str, list] = {"ours": [], "theirs": [], "ours_cpu": [], "theirs_cpu": []}

    def timed(key, fn, *a):
        tic, cpu = time.perf_counter(), time.thread_time()
        fn(*a)
        times[key].append((time.perf_counter() - tic) * 1e3)
        times[key + "_cpu"].append((time.thread_time() - cpu) * 1e3)

    with torch.inference_mode():
        for _ in range(reps):
            x = (rng.standard_normal((spec.n_channels, 4 * SFREQ_MODEL)) * 20).astype(np.float32)  # (C, T) µV
            timed("ours", model.log_odds, x, spec)
            timed("theirs", anchor, torch.from_numpy(x)[None] / 100.0)  # (1, C, T) in CBraMod's 100 µV units
    return times


# ---------------------------------------------------------------- one soak

def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler(threading.Thread):
    """CPU time (``os.times``: user + system, all threads) and RSS of this process, every ``period`` s."""

    def __init__(self, period: float = 1.0):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = os.times()
            self.samples.append((time.monotonic(), t.user + t.system, rss_bytes()))
            self.stop.wait(self.period)


def wait_for_stream(name: str, timeout: float = 120.0):
    """Connect once the player process has started (it imports MNE and reads the EDF first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_stream(f"lsl:{name}", bufsize=5.0, timeout=5.0)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise


def soak(name: str, model: EngagementModel, args, config: DetectorConfig) -> dict:
    """Run the live detector on the stream for ``args.soak_s``; percentiles after warm-up."""
    # calibrate first, then connect: on a loaded machine, samples that queue in the inlet while the
    # baseline is computed would otherwise reach the detector minutes late
    calib = read_session([str(data_root() / f"eegmat/Subject{args.subject:02d}_1.edf")])
    detector = AttentionDetector(calib.spec, config, model).calibrate_on(
        calib.signal[:, :int(64 * calib.spec.sfreq)], "causal")
    stream = wait_for_stream(name)
    try:
        source = check_stream(stream, name, model, config.window_s)
        assert calib.spec.ch_names == source.spec.ch_names, "calibration and stream channels differ"
        pulls: list[float] = []
        get_data = stream.get_data

        def timed_get_data(*a, **k):
            tic = time.perf_counter()
            out = get_data(*a, **k)
            pulls.append((time.perf_counter() - tic) * 1e3)
            return out

        stream.get_data = timed_get_data
        states: list[str] = []

        class Count:
            def publish(self, record):
                states.append(record["state"])

            def close(self):
                pass

        live = LiveDetector(source, config, model, sinks=[Count()], detector=detector)
        sampler = Sampler()
        sampler.start()
        t0 = time.monotonic()
        live.run(duration=args.soak_s, handle_signals=False)
        sampler.stop.set()
        sampler.join()
    finally:
        stream.disconnect()
    skip = int(round(args.warmup_s / config.hop_s))
    lat, comp = list(live.stats.latencies_ms)[skip:], list(live.stats.compute_ms)[skip:]
    s = [x for x in sampler.samples if x[0] - t0 >= args.warmup_s]
    cpu = 100 * (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])
    rss = np.array([x[2] for x in s]) / 2**20
    minutes = (s[-1][0] - s[0][0]) / 60
    slope = float(np.polyfit([(x[0] - s[0][0]) / 60 for x in s], rss, 1)[0]) if len(s) > 2 else 0.0
    return {"windows": len(comp), "no_data": live.stats.no_data, "gaps": live.stats.gaps,
            "bad": sum(st == "signal-bad" for st in states),
            "e2e_p50": float(np.percentile(lat, 50)), "e2e_p99": float(np.percentile(lat, 99)),
            "e2e_max": float(np.max(lat)),
            "compute_p50": float(np.percentile(comp, 50)), "compute_p99": float(np.percentile(comp, 99)),
            "compute_cpu_p50": float(np.percentile(list(live.stats.compute_cpu_ms)[skip:], 50)),
            "compute_cpu_p99": float(np.percentile(list(live.stats.compute_cpu_ms)[skip:], 99)),
            "process_cpu_ms_per_hop": 1e3 * (s[-1][1] - s[0][1]) / max(1, len(comp)),
            "pull_p50": float(np.percentile(pulls, 50)), "pull_p99": float(np.percentile(pulls, 99)),
            "cpu_pct": cpu, "rss_start_mib": float(rss[0]), "rss_end_mib": float(rss[-1]),
            "rss_max_mib": float(rss.max()), "rss_slope_mib_per_min": slope, "minutes": minutes}


def rows_of(label: str, r: dict, hop_ms: float) -> list[dict]:
    """The ``--json`` rows of one configuration (``chunk_ms``: the replay's stamping offset, see
    the module docstring; the ``+ one chunk`` row is what an amplifier sending whole chunks gets)."""
    def row(name, unit, ours, anchor):
        return {"name": f"{label} {name}", "unit": unit, "brainfm": ours, "anchor": anchor,
                "ratio": None if anchor is None else anchor / ours}
    return [
        row("compute per hop p50", "ms", r["compute_p50"], r["anchor_p50"]),
        row("compute per hop p99", "ms", r["compute_p99"], r["anchor_p99"]),
        row("compute per hop CPU time p50", "ms", r["compute_cpu_p50"], r["anchor_cpu_p50"]),
        row("compute per hop CPU time p99", "ms", r["compute_cpu_p99"], r["anchor_cpu_p99"]),
        row("decoder forward p50", "ms", r["forward_p50"], r["anchor_p50"]),
        row("decoder forward p99", "ms", r["forward_p99"], r["anchor_p99"]),
        row("decoder forward CPU time p50", "ms", r["forward_cpu_p50"], r["anchor_cpu_p50"]),
        row("end-to-end p50 (anchor: target hop+20 ms)", "ms", r["e2e_p50"], hop_ms + 20),
        row("end-to-end p99 (anchor: target hop+20 ms)", "ms", r["e2e_p99"], hop_ms + 20),
        row("end-to-end p99 + one chunk (anchor: target hop+20 ms)", "ms", r["e2e_p99"] + r["chunk_ms"], hop_ms + 20),
        row("CPU of one core", "%", r["cpu_pct"], None),
        row("process CPU time per hop", "ms", r["process_cpu_ms_per_hop"], None),
        row("RSS growth over soak", "MiB", r["rss_end_mib"] - r["rss_start_mib"], None),
        row("RSS max", "MiB", r["rss_max_mib"], None),
        row("mne-lsl get_data per poll p50", "ms", r["pull_p50"], None),
        row("mne-lsl get_data per poll p99", "ms", r["pull_p99"], None),
    ]


def cpu_flags() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "small", "base"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=("fp32", "int8"))
    p.add_argument("--soak-s", type=float, default=60.0, help="seconds of live detection per configuration")
    p.add_argument("--warmup-s", type=float, default=5.0, help="left out of the percentiles and the RSS growth")
    p.add_argument("--subject", type=int, default=33)
    p.add_argument("--chunk", type=int, default=10, help="samples per LSL push (10 = 20 ms at 500 Hz)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the decoder and the anchor")
    p.add_argument("--anchor-reps", type=int, default=40, help="interleaved forward calls per configuration")
    p.add_argument("--workdir", default="runs/bench-stream", help="model files (reused)")
    p.add_argument("--json", default=None)
    p.add_argument("--details", default=None, help="also write the per-configuration measurements here")
    p.add_argument("--play", default=None, help=argparse.SUPPRESS)  # child process: the replay
    args = p.parse_args(argv)
    if args.play:
        play(args.play, args.subject, args.chunk)
        return []
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"bench-stream-{uuid.uuid4().hex[:8]}"
    player = subprocess.Popen([sys.executable, __file__, "--play", name, "--subject", str(args.subject),
                               "--chunk", str(args.chunk)], env=os.environ.copy())
    config = DetectorConfig(calibration_s=60.0)
    rows, details = [], []
    try:
        for preset in args.models:
            for precision in args.precisions:
                label = f"{preset} {precision}"
                model = EngagementModel(model_file(workdir, preset, precision), threads=args.threads)
                spec = read_session([str(data_root() / f"eegmat/Subject{args.subject:02d}_1.edf")]).spec
                anchor = cbramod_anchor(spec.n_channels, 4 * SFREQ_MODEL)
                forward_times(model, anchor, spec, 3)  # warm-up
                times = forward_times(model, anchor, spec, args.anchor_reps)
                r = soak(name, model, args, config)
                pct = {f"{key}_p{q}": float(np.percentile(times[src], q)) for q in (50, 99)
                       for key, src in (("forward", "ours"), ("anchor", "theirs"), ("forward_cpu", "ours_cpu"),
                                        ("anchor_cpu", "theirs_cpu"))}
                r.update(config=label, **pct, anchor_min=float(np.min(times["theirs"])),
                         anchor_max=float(np.max(times["theirs"])), load_avg=os.getloadavg()[0],
                         chunk_ms=1e3 * args.chunk / spec.sfreq)
                details.append(r)
                rows += rows_of(label, r, config.hop_s * 1e3)
                print(json.dumps(r), flush=True)
    finally:
        player.terminate()
        player.wait(10)
    print(f"\nsoak {args.soak_s:g} s per configuration, EEGMAT subject {args.subject}, {spec.n_channels} channels, "
          f"chunks of {args.chunk} samples, {args.threads} thread(s); CPU flags: {cpu_flags()}; "
          "anchor: braindecode CBraMod fp32 batch-1 forward (ratio > 1: brainfm better)")
    print(f"{'metric':<64} {'unit':<5} {'brainfm':>9} {'anchor':>9} {'ratio':>6}")
    for r in rows:
        anchor = "-" if r["anchor"] is None else f"{r['anchor']:9.2f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:6.2f}"
        print(f"{r['name']:<64} {r['unit']:<5} {r['brainfm']:>9.2f} {anchor:>9} {ratio:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.details:
        Path(args.details).write_text(json.dumps({"args": vars(args), "cpu_flags": cpu_flags(),
                                                  "configurations": details}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
