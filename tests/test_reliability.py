"""Bad input and attacks (issue #17), on real recordings: each case asserts the message a
person reads and that nothing outside the dataset is read or stored.

The cases and what brainfm does are listed in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from brainfm.data.store import ShardStore
from brainfm.deploy import load, quantize, save_bundle
from brainfm.models import BrainDecoder, ModelConfig
from brainfm.pipelines.bids_io import ConversionError, discover, referenced_files, source_checksum, source_files
from brainfm.pipelines.convert import convert

VHDR = "sub-brainvision/eeg/sub-brainvision_task-test_eeg.vhdr"
SET = "sub-eeglab/eeg/sub-eeglab_task-tutorial_eeg.set"
RECORDING = "sub-brainvision_task-test_eeg"


@pytest.fixture
def bids(small_sample, tmp_path) -> Path:
    """A BIDS dataset of two real recordings (BrainVision, EEGLAB), and a secret beside it."""
    src, _ = small_sample
    root = tmp_path / "bids"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("sub-*"))
    for sub in ("sub-brainvision", "sub-eeglab"):
        shutil.copytree(src / sub, root / sub)
    # outside the dataset: bytes that must never reach a store (int16 noise, readable as EEG)
    (tmp_path / "secret.bin").write_bytes(np.random.default_rng(0).integers(-999, 999, 32 * 4000, np.int16).tobytes())
    return root


def _set_vhdr_data_file(root: Path, name: str) -> None:
    vhdr = root / VHDR
    text = vhdr.read_text(encoding="utf-8")
    vhdr.write_text(text.replace("DataFile=sub-brainvision_task-test_eeg.eeg", f"DataFile={name}"), encoding="utf-8")


def _convert_refuses(root: Path, store: Path, *words: str) -> str:
    report = convert(root, store, workers=1, progress=False)
    failed = {f["id"]: f["error"] for f in report.failed}
    assert set(failed) == {RECORDING}, report.failed
    for word in ("refused", "outside the BIDS root", *words):
        assert word in failed[RECORDING]
    assert report.converted == ["sub-eeglab_task-tutorial_eeg"], "the other recordings still convert"
    assert RECORDING not in ShardStore(store).recording_ids
    return failed[RECORDING]


@pytest.mark.parametrize("absolute", [False, True])
def test_vhdr_data_file_outside_the_dataset_is_refused(bids, tmp_path, absolute):
    secret = tmp_path / "secret.bin"
    _set_vhdr_data_file(bids, str(secret) if absolute else "../../../secret.bin")
    message = _convert_refuses(bids, tmp_path / "store", "sub-brainvision_task-test_eeg.vhdr", "secret.bin")
    assert str(secret) in message  # names both files: the header and what it points at
    # the CLI: one error, exit 1, nothing read from the secret
    out = subprocess.run([sys.executable, "-m", "brainfm.cli", "convert", str(bids), str(tmp_path / "store2"),
                          "--workers", "1", "--no-progress"], capture_output=True, text=True)
    assert out.returncode == 1 and "outside the BIDS root" in out.stderr


def test_symlinked_sidecar_and_scans_outside_the_dataset_are_refused(bids, tmp_path):
    channels = bids / "sub-brainvision/eeg/sub-brainvision_task-test_channels.tsv"
    outside = tmp_path / "channels.tsv"
    shutil.move(channels, outside)
    channels.symlink_to(outside)
    _convert_refuses(bids, tmp_path / "store", "channels.tsv")
    channels.unlink()
    shutil.move(outside, channels)
    scans = bids / "sub-brainvision/sub-brainvision_scans.tsv"
    scans.write_text("filename\tacq_time\n")
    os.replace(scans, tmp_path / "scans.tsv")
    scans.symlink_to(tmp_path / "scans.tsv")
    _convert_refuses(bids, tmp_path / "store-scans", "scans.tsv")


def test_eeglab_data_file_outside_the_dataset_is_refused(bids, tmp_path):
    set_file = bids / SET
    mat = scipy.io.loadmat(set_file, appendmat=False)
    mat["EEG"]["data"][0, 0] = np.array(["../../../secret.fdt"])
    scipy.io.savemat(set_file, {k: v for k, v in mat.items() if not k.startswith("__")}, appendmat=False)
    shutil.copy(tmp_path / "secret.bin", tmp_path / "secret.fdt")
    path = next(p for p in discover(bids) if p.fpath.suffix == ".set")
    assert referenced_files(Path(path.fpath)) == [Path(path.fpath).parent / "../../../secret.fdt"]
    with pytest.raises(ConversionError, match=r"sub-eeglab_task-tutorial_eeg\.set names .*secret\.fdt.*outside"):
        source_files(path)


def test_files_a_header_names_are_checked_and_hashed(bids):
    """A legitimate DataFile under another name is read, and its bytes are in the checksum."""
    eeg = bids / "sub-brainvision/eeg/sub-brainvision_task-test_eeg.eeg"
    renamed = eeg.with_name("renamed.eeg")
    eeg.rename(renamed)
    _set_vhdr_data_file(bids, "renamed.eeg")
    path = next(p for p in discover(bids) if p.fpath.suffix == ".vhdr")
    assert renamed in source_files(path)
    before = source_checksum(path)
    data = bytearray(renamed.read_bytes())
    data[100] ^= 1
    renamed.write_bytes(bytes(data))
    assert source_checksum(path) != before


def _bundle(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    decoder = BrainDecoder(ModelConfig.from_name("tiny"), n_classes=2, subject_channels={"eegmat00": 19})
    return save_bundle(quantize(decoder, "w8a8", smoothquant=False), tmp_path / "bundle")


@pytest.mark.parametrize("edit", [
    ("subject count", lambda dec: dec.update(subject_channels={f"s{i}": 19 for i in range(10**6)})),
    ("layer count", lambda dec: dec["config"].update(n_layers=10**9)),
    ("width", lambda dec: dec["config"].update(d_ff=4096)),
])
def test_bundle_config_sizes_are_checked_before_allocating(tmp_path, edit):
    what, change = edit
    path = _bundle(tmp_path)
    assert load(path) is not None
    doc = json.loads((path / "bundle.json").read_text())
    change(doc["decoder"])
    (path / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="exceeds what the weights hold|the config describes"):
        load(path)
