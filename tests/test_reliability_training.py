"""Issue #17, item 9: training on nothing fails with one clear error and writes no weights.

Each case runs ``brainfm fit`` as a user would (a subprocess, so the test holds whatever the
CLI does with the error) on real recordings of the small sample, and asserts the exit code,
the message, that no ``encoder.safetensors``/``decoder.safetensors`` was written, and that no empty
run folder (``version_N``) was left to take the next run's number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from brainfm.data.store import ShardStore
from brainfm.data.store_write import commit, new_manifest

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = ROOT / "configs/pretrain/quickstart.yaml"
FINETUNE = ROOT / "configs/finetune/eegmat.yaml"


def _fit(config: Path, store: Path | str, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "brainfm.cli", "fit", "--config", str(config), "--trainer.max_steps=2",
           "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
           f"--data.init_args.store={store}", "--data.init_args.batch_size=4", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def _assert_fails_without_weights(out: subprocess.CompletedProcess, tmp_path: Path, *message: str) -> None:
    assert out.returncode != 0, out.stdout[-2000:] + out.stderr[-2000:]
    for part in message:
        assert part in out.stderr, out.stderr[-3000:]
    written = [p.name for p in tmp_path.rglob("*.safetensors")]
    assert not written, f"weights written by a fit that trained nothing: {written}"
    left = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("version_*")]
    assert not left, f"a failed start left run folders (the next run would not be version_0): {left}"


def test_windows_longer_than_every_recording(small_sample, tmp_path):
    _, store = small_sample
    longest = max(e["n_samples"] / e["sfreq"] for e in ShardStore(store).manifest["recordings"].values())
    out = _fit(PRETRAIN, store, tmp_path, f"--data.init_args.window_s={longest + 100:.0f}",
               "--data.init_args.val_subjects=[eegmat28]")
    _assert_fails_without_weights(out, tmp_path, "no training windows", f"{longest + 100:.0f}-s windows")


def test_windows_longer_than_every_recording_when_fine_tuning(small_sample, tmp_path):
    _, store = small_sample
    split = '--data.init_args.split={"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}'
    out = _fit(FINETUNE, store, tmp_path, split, "--data.init_args.window_s=1000")
    _assert_fails_without_weights(out, tmp_path, "no training windows", "1000-s windows")


def test_empty_store(small_sample, tmp_path):
    _, store = small_sample
    empty = tmp_path / "empty-store"
    manifest = ShardStore(store).manifest
    commit(str(empty), new_manifest(manifest["preset"], manifest["preset_hash"]))
    assert json.loads((empty / "manifest.json").read_text())["recordings"] == {}
    out = _fit(PRETRAIN, empty, tmp_path, "--data.init_args.val_subjects=[eegmat28]")
    _assert_fails_without_weights(out, tmp_path, "holds no recordings")


@pytest.mark.parametrize("config", [PRETRAIN, FINETUNE], ids=["pretrain", "finetune"])
def test_validation_subjects_absent_from_the_store(small_sample, tmp_path, config):
    _, store = small_sample
    if config == PRETRAIN:
        override = "--data.init_args.val_subjects=[nobody1, nobody2]"
    else:
        override = '--data.init_args.split={"train": ["eegmat00"], "val": ["nobody1", "nobody2"], "test": ["eegmat32"]}'
    out = _fit(config, store, tmp_path, override)
    _assert_fails_without_weights(out, tmp_path, "(nobody1, nobody2)", "none is in store")
