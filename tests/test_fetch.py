"""Fetchers find the local copies under the data root, verified, without the network."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile

import pooch
import pytest

from brainfm.data.root import data_root
from brainfm.pipelines import fetch, sample


def test_eegmat_local_copies_are_checksummed(shared_data):
    paths = fetch.fetch_eegmat([0, 35])
    assert [p.name for p in paths] == ["Subject00_1.edf", "Subject00_2.edf", "Subject35_1.edf", "Subject35_2.edf"]
    assert all(p.parent == shared_data / "eegmat" for p in paths)
    assert sum(name.endswith(".edf") for name in fetch.eegmat_checksums()) == 72


def test_eegmat_tampered_copy_is_refused(tmp_path, shared_data):
    shutil.copy(shared_data / "eegmat/Subject03_1.edf", tmp_path / "Subject03_1.edf")
    shutil.copy(shared_data / "eegmat/Subject03_2.edf", tmp_path / "Subject03_2.edf")
    assert len(fetch.fetch_eegmat([3], path=tmp_path)) == 2
    with open(tmp_path / "Subject03_2.edf", "r+b") as fh:
        fh.seek(5000)
        fh.write(b"\x00\x01")
    with pytest.raises(OSError, match="does not match its SHA-256"):
        fetch.fetch_eegmat([3], path=tmp_path)
    with pytest.raises(ValueError, match="0-35"):
        fetch.fetch_eegmat([36])


def test_eegbci_through_mne_fetcher(shared_data):
    paths = fetch.fetch_eegbci(1, [4, 8, 12])
    assert [p.name for p in paths] == ["S001R04.edf", "S001R08.edf", "S001R12.edf"]


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAINFM_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.setenv("BRAINFM_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="BRAINFM_DATA"):
        data_root()
    with pytest.raises(FileNotFoundError, match="mne.datasets.testing"):
        monkeypatch.setenv("BRAINFM_DATA", str(tmp_path))
        fetch.local_file("meg/kit/test.sqd")


def test_fmri_local_copies_are_checksummed(shared_data):
    assert fetch.fetch_fmri() == shared_data / "fmri"


def _fake_nitime_wheel(path, shared_data):
    """A zip laid out as nitime's wheel (``nitime/data/...``), from the real files."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in fetch.FMRI_FILES:
            if name != "example4d.nii.gz":
                archive.write(shared_data / "fmri" / name, f"nitime/data/{name}")
    return path


def test_fmri_fetch_fills_a_folder_from_nitimes_wheel_and_nibabel(tmp_path, shared_data, monkeypatch):
    calls = []

    def retrieve(url, known_hash, fname, path):  # pooch.retrieve, without the network
        calls.append((url, known_hash))
        return str(_fake_nitime_wheel(tmp_path / fname, shared_data))

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    folder = fetch.fetch_fmri(tmp_path / "fmri")
    assert sorted(p.name for p in folder.iterdir()) == sorted(fetch.FMRI_FILES)  # no partial or download left
    assert calls == [(fetch.NITIME_WHEEL_URL, f"sha256:{fetch.NITIME_WHEEL_SHA256}")]
    assert fetch.fetch_fmri(tmp_path / "fmri") == folder and len(calls) == 1  # complete: nothing fetched again
    with open(folder / "fmri2.nii.gz", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(OSError, match="fmri2.nii.gz does not match its SHA-256"):
        fetch.fetch_fmri(folder)


def test_sample_leaves_out_missing_format_excerpts(tmp_path, shared_data, monkeypatch, caplog):
    root = tmp_path / "data"
    (root / "eeg").mkdir(parents=True)
    (root / "eegmat").symlink_to(shared_data / "eegmat")
    (root / "eeg" / "brainvision").symlink_to(shared_data / "eeg" / "brainvision")
    monkeypatch.setenv("BRAINFM_DATA", str(root))
    assert fetch.missing_excerpts() == [rel for rel in fetch.FORMAT_EXCERPTS if not rel.startswith("eeg/brainvision")]
    with caplog.at_level(logging.WARNING, logger="brainfm.pipelines.sample"):
        bids = sample.build_sample_bids(tmp_path / "bids", eegmat_subjects=[0], eegbci_runs=[])
    assert sorted(p.name for p in bids.glob("sub-*")) == ["sub-brainvision", "sub-eegmat00"]
    assert "6 of 7 MEG/EEG format excerpts" in caplog.text and "meg/kit/test.sqd" in caplog.text
    assert json.loads((bids / ".brainfm-sample.json").read_text())["excerpts"] == ["eeg/brainvision/test.vhdr"]
