"""Scale plan (issue #15 item 7): extrapolate measured per-core and per-GPU rates to a corpus.

Every input is either a figure measured in ``docs/benchmarks.md`` (named with its row) or an
assumption stated with its source; the script multiplies them out and prints the markdown
table of ``docs/scale.md``::

    python benchmarks/scale_plan.py --hours 25000 2500 --cores 16 64 --json scale.json

Nothing is timed here; change an input when a new measurement replaces it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

# --- measured (docs/benchmarks.md) --------------------------------------------------------
#: EEGMAT sample store: 36 subjects x 240 s (180 s rest + 60 s task), 19 channels at 200 Hz,
#: 61.6 MiB on disk in format 3 with Blosc lz4 5 ("Cold random-window reads", 2026-12-01).
EEGMAT_SECONDS = 36 * 240.0
EEGMAT_STORE_BYTES = 61.6 * 2**20
#: Conversion, 1 worker, in-process, per 72 recordings (19 ch of 500-Hz EDF in), MNE filters and
#: resampling included: 288 recordings in 32.8 s, the slower of the two one-process runs of
#: "1 -> 2 workers on a dataset large enough to amortise start-up" (27.3 and 32.8 s, 2026-12-01;
#: the first, 72-recording run took 6.0 s, 2026-11-25).
CONVERT_SECONDS_1WORKER = 32.8 / 4
CONVERT_INPUT_HZ = 500.0
#: Cold random 5-s windows per second per DataLoader worker, page cache emptied: 2 workers read
#: 4 756 and 4 980 windows/s over 4 copies of EEGMAT ("Cold reads with 2 workers", the new code's
#: two runs, 2026-12-01), so 2 434 per worker. Both workers shared the 2-core EPYC with the main
#: process, so a worker with a core of its own reads more; one process alone reads 6 642.
COLD_WINDOWS_PER_S = (4756.0 + 4980.0) / 2 / 2
COLD_WINDOW_S = 5.0
#: H200 bf16 train step of ``base`` (12 layers, d = 200), 19 ch x 30 s, B = 256, dropout 0.1
#: ("GPU: first runs of gpu_suite.sh", run 3): 1 308 windows/s, MFU 2.3 %.
GPU_TRAIN_WINDOWS_PER_S = 1308.0
GPU_TRAIN_WINDOW_S = 30.0
#: CPU fp32 train step of ``base``, same input, B = 2, dropout 0.1 ("Cheaper dropout masks"): 5.63 windows/s.
CPU_TRAIN_WINDOWS_PER_S = 5.63

# --- assumptions (stated, with sources) ---------------------------------------------------
#: Channels kept per recording: the 19 10-20 electrodes, as CBraMod and brainfm's EEGMAT
#: preset do (TUEG montages carry 20-40 EEG channels; the rest are dropped at conversion).
CHANNELS = 19
#: TUEG's typical input rate: 250-256 Hz (Obeid & Picone 2016, TUH EEG corpus); MNE's
#: filter and resampling cost is taken as proportional to input samples, as measured at 500 Hz.
TUEG_INPUT_HZ = 256.0
#: Pretraining epochs: CBraMod pretrains 40 epochs on TUEG (Wang et al. 2025, ICLR).
EPOCHS = 40


@dataclass
class Plan:
    hours: float
    store_gib: float
    float32_gib: float
    convert_core_hours: float
    convert_wall_h: dict[int, float]
    gpu_epoch_h: float
    gpu_pretrain_h: float
    loader_workers_per_gpu: float
    cpu_epoch_days: float


def plan(hours: float, cores: list[int]) -> Plan:
    seconds = hours * 3600.0
    bytes_per_eeg_second = EEGMAT_STORE_BYTES / EEGMAT_SECONDS  # 19 ch at 200 Hz, float16 + lz4
    store = seconds * bytes_per_eeg_second * CHANNELS / 19
    float32 = seconds * 200.0 * CHANNELS * 4
    # conversion: input samples per core-second at the measured rate, scaled to TUEG's input rate
    input_samples_per_core_s = EEGMAT_SECONDS * 19 * CONVERT_INPUT_HZ / CONVERT_SECONDS_1WORKER
    core_h = seconds * CHANNELS * TUEG_INPUT_HZ / input_samples_per_core_s / 3600
    gpu_eeg_s_per_s = GPU_TRAIN_WINDOWS_PER_S * GPU_TRAIN_WINDOW_S
    epoch_h = seconds / gpu_eeg_s_per_s / 3600
    loader_eeg_s_per_s = COLD_WINDOWS_PER_S * COLD_WINDOW_S  # per DataLoader worker, cold
    cpu_epoch_days = seconds / (CPU_TRAIN_WINDOWS_PER_S * GPU_TRAIN_WINDOW_S) / 86400
    return Plan(hours, store / 2**30, float32 / 2**30, core_h, {n: core_h / n for n in cores}, epoch_h,
                epoch_h * EPOCHS, gpu_eeg_s_per_s / loader_eeg_s_per_s, cpu_epoch_days)


def markdown(plans: list[Plan]) -> str:
    cores = list(plans[0].convert_wall_h)
    head = ["corpus (h of EEG)", "store (GiB)", "float32 (GiB)", "conversion (core-h)"]
    head += [f"conversion on {n} cores (h)" for n in cores]
    head += ["1 epoch, 1 H200 (h)", f"{EPOCHS} epochs, 1 H200 (h)", "cold DataLoader workers per H200",
             "1 epoch, 1 CPU core-pair fp32 (days)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in plans:
        cells = [f"{p.hours:,.0f}", f"{p.store_gib:,.0f}", f"{p.float32_gib:,.0f}", f"{p.convert_core_hours:,.1f}"]
        cells += [f"{p.convert_wall_h[n]:,.2f}" for n in cores]
        cells += [f"{p.gpu_epoch_h:,.2f}", f"{p.gpu_pretrain_h:,.1f}", f"{p.loader_workers_per_gpu:.1f}",
                  f"{p.cpu_epoch_days:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, nargs="+", default=[25000.0, 2500.0],
                    help="corpus sizes in hours of EEG (NeuroLM ~25 000 h, LaBraM ~2 500 h)")
    ap.add_argument("--cores", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    plans = [plan(h, args.cores) for h in args.hours]
    print(markdown(plans))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(p) for p in plans], f, indent=2)


if __name__ == "__main__":
    main()
