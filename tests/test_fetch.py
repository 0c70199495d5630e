"""Fetchers find the local copies under the data root, verified, without the network."""

from __future__ import annotations

import shutil

import pytest

from brainfm.data.root import data_root
from brainfm.pipelines import fetch


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
