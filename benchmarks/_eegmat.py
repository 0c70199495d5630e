"""Shared setup of the data benchmarks: the EEGMAT BIDS dataset, the braindecode anchor
pipeline, and the JSON/table output every benchmark uses.

The anchor runs the *same* MNE operations in the same order as brainfm's ``eeg-fm``
preset (pick EEG, resample to 200 Hz, notch at 50 Hz, band-pass 0.3-75 Hz), through
braindecode's ``BIDSDataset`` and ``preprocess(..., save_dir=...)`` (FIF, float32), so
that both sides do equal signal work and differ only in how they parallelise, store
and read.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

warnings.filterwarnings("ignore", message="Montage name 'standard_1020' is deprecated")

from brainfm.pipelines.fetch import EEGMAT_SUBJECTS  # noqa: E402
from brainfm.pipelines.presets import get_preset  # noqa: E402
from brainfm.pipelines.sample import build_sample_bids  # noqa: E402


def eegmat_bids(workdir: Path, subjects: Sequence[int] = EEGMAT_SUBJECTS) -> Path:
    """EEGMAT as BIDS (EDF), built once under ``workdir``."""
    return build_sample_bids(workdir / "eegmat_bids", subjects, eegbci_runs=(), formats=False)


def repeat_bids(bids: Path, dest: Path, copies: int) -> Path:
    """``bids`` plus ``copies - 1`` copies of every subject under new labels (``<label>c<k>``)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(bids, dest, copy_function=os.link)
    subjects = sorted(p.name.removeprefix("sub-") for p in bids.glob("sub-*") if p.is_dir())
    participants = dest / "participants.tsv"
    extra_rows = []
    for k in range(1, copies):
        for label in subjects:
            new = f"{label}c{k}"
            for src in (bids / f"sub-{label}").rglob("*"):
                target = dest / str(src.relative_to(bids)).replace(f"sub-{label}", f"sub-{new}")
                if src.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                elif src.suffix in (".tsv", ".json"):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(src.read_text().replace(f"sub-{label}", f"sub-{new}"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(src, target)
            extra_rows += [line.replace(f"sub-{label}", f"sub-{new}", 1) for line in
                           participants.read_text().splitlines() if line.startswith(f"sub-{label}\t")]
    if extra_rows:
        participants.unlink()  # a hard link to the source: write a new file
        lines = (bids / "participants.tsv").read_text().splitlines() + extra_rows
        participants.write_text("\n".join(lines) + "\n")
    return dest


def braindecode_preprocess(bids: Path, save_dir: Path, n_jobs: int = 1):
    """braindecode's conversion: lazy BIDS read, the eeg-fm operations, FIF float32 on disk."""
    from braindecode.datasets import BIDSDataset
    from braindecode.preprocessing import Preprocessor, preprocess

    preset = get_preset("eeg-fm")
    ds = BIDSDataset(str(bids), preload=False)
    steps = [
        Preprocessor("pick", picks="eeg"),
        Preprocessor("resample", sfreq=preset.sfreq, method="polyphase", verbose="error"),
        Preprocessor("notch_filter", freqs=[50.0], verbose="error"),
        Preprocessor("filter", l_freq=preset.l_freq, h_freq=preset.h_freq, verbose="error"),
    ]
    preprocess(ds, steps, save_dir=str(save_dir), overwrite=True, n_jobs=n_jobs)
    return save_dir


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(path).rglob(pattern) if f.is_file())


def row(name: str, unit: str, brainfm: float, anchor: float, higher_is_better: bool = True) -> dict:
    ratio = brainfm / anchor if higher_is_better else anchor / brainfm
    return {"name": name, "unit": unit, "brainfm": brainfm, "anchor": anchor, "ratio": ratio}


def report(rows: list[dict], anchor: str, json_path: str | None) -> None:
    print(f"\n{'metric':<44} {'unit':<10} {'brainfm':>11} {anchor:>12} {'ratio':>7}")
    for r in rows:
        print(f"{r['name']:<44} {r['unit']:<10} {r['brainfm']:>11.4g} {r['anchor']:>12.4g} {r['ratio']:>7.2f}")
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
