"""Conversion of a real multi-format BIDS dataset (EEGMAT, EEGMMIDB, Neuromag, KIT, EEGLAB, BrainVision)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mne
import numpy as np
import pytest
from mne_bids import BIDSPath, read_raw_bids, write_raw_bids

from brainfm.data.store import FP16_MAX_REL_ERROR, ShardStore
from brainfm.pipelines.bids_io import discover, recording_id
from brainfm.pipelines.convert import convert
from brainfm.pipelines.presets import get_preset
from brainfm.signal import UNITS

EXPECTED_FORMATS = {".edf", ".fif", ".con", ".sqd", ".set", ".vhdr"}


def _mne_reference(bids_path: BIDSPath, attrs: dict) -> mne.io.BaseRaw:
    """MNE's own preprocessing with the parameters the store says it used."""
    f = attrs["filters"]
    raw = read_raw_bids(bids_path, verbose="error")
    raw.pick(attrs["channels"]["names"]).load_data(verbose="error")
    raw.resample(f["sfreq"], method=f["resample"], verbose="error")
    picks = np.arange(len(raw.ch_names))
    if f["notch"]:
        raw.notch_filter(f["notch"], picks=picks, verbose="error")
    raw.filter(f["l_freq"], f["h_freq"], picks=picks, verbose="error")
    return raw


def test_every_format_converts(small_sample):
    bids, store_url = small_sample
    store = ShardStore(store_url)
    sources = {Path(store.entry(r)["source"]).suffix for r in store.recording_ids}
    assert EXPECTED_FORMATS <= sources
    assert set(store.recording_ids) == {recording_id(p) for p in discover(bids)}
    summary = store.summary()
    assert summary["sfreq"] == 200.0 and summary["format_version"] == 3
    assert {"eeg", "mag", "grad"} <= set(summary["channel_type_counts"])


def test_stored_signal_matches_mne(small_sample):
    """Data, channel types, positions, orientations and events equal what MNE reports."""
    bids, store_url = small_sample
    store = ShardStore(store_url)
    worst = 0.0
    for bp in discover(bids):
        rec = store.recording(recording_id(bp))
        ref = _mne_reference(bp, rec.attrs)
        assert rec.spec.ch_names == tuple(ref.ch_names)
        assert rec.spec.ch_types == tuple(ref.get_channel_types())
        factors = np.array([UNITS[t][1] for t in rec.spec.ch_types])[:, None]
        expected = ref.get_data() * factors
        stored = rec.read_all()
        assert stored.shape == expected.shape, rec.id
        # float16 rounding: relative 2**-11 plus float16's subnormal spacing
        tol = FP16_MAX_REL_ERROR * np.abs(expected) + 2.0**-24 * rec.scale[:, None]
        assert (np.abs(stored - expected) <= tol * 1.0001).all(), rec.id
        rel = np.abs(stored - expected) / np.maximum(np.abs(expected), 1e-3)
        worst = max(worst, float(rel.max()))

        raw = read_raw_bids(bp, verbose="error").pick(list(rec.spec.ch_names))
        loc = np.array([ch["loc"] for ch in raw.info["chs"]])
        meg = np.isin(rec.spec.ch_types, ["mag", "grad"])
        if meg.any():
            trans = raw.info["dev_head_t"]["trans"] if raw.info["dev_head_t"] is not None else np.eye(4)
            assert rec.attrs["meg_frame"] == ("head" if raw.info["dev_head_t"] is not None else "device")
            np.testing.assert_allclose(rec.spec.positions[meg], mne.transforms.apply_trans(trans, loc[meg, :3]), atol=1e-9)
            np.testing.assert_allclose(rec.spec.orientations[meg], loc[meg, 9:12] @ trans[:3, :3].T, atol=1e-9)
        eeg = ~meg
        if rec.attrs["positions"] == "recorded" and eeg.any():
            np.testing.assert_allclose(rec.spec.positions[eeg], loc[eeg, :3], atol=1e-9)
        assert (rec.spec.orientations[eeg] == 0).all()

        events = rec.events
        ann = raw.annotations
        keep = [not d.upper().startswith(("BAD", "EDGE")) for d in ann.description]
        assert list(events.label) == list(np.asarray(ann.description)[keep])
        if len(events):
            ev, ev_id = mne.events_from_annotations(raw, verbose="error")
            first: dict[str, float] = {}
            for on, lab in zip(events.onset, events.label):
                first.setdefault(lab, on)
            inv = {v: k for k, v in ev_id.items()}
            onset_s = {}
            for sample, _, code in ev:
                onset_s.setdefault(inv[code], (sample - raw.first_samp) / raw.info["sfreq"])
            for lab, on in onset_s.items():
                assert abs(first[lab] - on) <= 1.0 / raw.info["sfreq"], (rec.id, lab)
    assert worst <= 2 * FP16_MAX_REL_ERROR


def test_montage_fallback_is_recorded_never_silent(small_sample):
    _, store_url = small_sample
    store = ShardStore(store_url)
    eegmat = store.recording("sub-eegmat00_task-rest_eeg")
    assert store.entry(eegmat.id)["positions"].startswith("montage:")
    assert eegmat.attrs["position_fallback"]["filled"] == list(eegmat.spec.ch_names)
    montage = mne.channels.make_standard_montage(eegmat.attrs["position_fallback"]["montage"])
    info = mne.create_info(list(eegmat.spec.ch_names), 200.0, "eeg")
    info.set_montage(montage, match_case=False)
    np.testing.assert_allclose(eegmat.spec.positions, [ch["loc"][:3] for ch in info["chs"]], atol=1e-9)
    # EEGLAB's "EEG 000" names match no montage: positions stay unknown and say so.
    eeglab = store.recording("sub-eeglab_task-tutorial_eeg")
    assert store.entry(eeglab.id)["positions"] == "none"
    assert np.isnan(eeglab.spec.positions).all()


def test_compressed_footprint_below_float32(small_sample):
    _, store_url = small_sample
    store = ShardStore(store_url)
    data_bytes = sum(f.stat().st_size for f in Path(store_url, "recordings").rglob("c/*/*") if f.is_file())
    float32_bytes = sum(4 * e["n_channels"] * e["n_samples"] for e in store.manifest["recordings"].values())
    assert data_bytes <= 0.6 * float32_bytes, data_bytes / float32_bytes


def test_rerun_skips_up_to_date(small_sample, tmp_path):
    bids, store_url = small_sample
    report = convert(bids, store_url, workers=1, progress=False)
    assert report.ok and not report.converted
    assert len(report.skipped) == len(ShardStore(store_url))


def test_store_with_other_preset_is_refused(small_sample):
    bids, store_url = small_sample
    with pytest.raises(ValueError, match="built with preset 'eeg-fm'"):
        convert(bids, store_url, "raw-200", workers=1, progress=False)


def _copy_bids(src: Path, dst: Path, subjects: list[str]) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("sub-*"))
    for s in subjects:
        shutil.copytree(src / f"sub-{s}", dst / f"sub-{s}")
    return dst


def test_corrupted_and_nan_recordings_are_reported(small_sample, tmp_path):
    bids, _ = small_sample
    root = _copy_bids(bids, tmp_path / "bids", ["eegmat00", "eegmat01"])
    # a truncated EDF
    edf = root / "sub-eegmat01/eeg/sub-eegmat01_task-rest_eeg.edf"
    edf.write_bytes(edf.read_bytes()[:5000])
    # a recording with NaNs (real EEGMAT data, BrainVision float32)
    raw = mne.io.read_raw_edf(root / "sub-eegmat00/eeg/sub-eegmat00_task-rest_eeg.edf", preload=True, verbose="error")
    raw.crop(0, 20)
    raw._data[3, 100:200] = np.nan
    raw.info["line_freq"] = 50.0
    write_raw_bids(raw, BIDSPath(subject="nan", task="rest", datatype="eeg", root=root),
                   format="BrainVision", allow_preload=True, overwrite=True, verbose="error")
    store = tmp_path / "store"
    report = convert(root, store, workers=2, progress=False)
    failed = {f["id"]: f["error"] for f in report.failed}
    assert set(failed) == {"sub-eegmat01_task-rest_eeg", "sub-nan_task-rest_eeg"}
    assert "cannot read" in failed["sub-eegmat01_task-rest_eeg"]
    assert "non-finite" in failed["sub-nan_task-rest_eeg"]
    assert set(report.converted) == {"sub-eegmat00_task-rest_eeg", "sub-eegmat00_task-arithmetic_eeg",
                                     "sub-eegmat01_task-arithmetic_eeg"}
    assert set(ShardStore(store).recording_ids) == set(report.converted)
    reports = list((store / "reports").glob("convert-*.json"))
    assert json.loads(reports[-1].read_text())["failed"]
    # the CLI exits non-zero unless --skip-errors
    cmd = [sys.executable, "-m", "brainfm.cli", "convert", str(root), str(store), "--workers", "1", "--no-progress"]
    assert subprocess.run(cmd, capture_output=True).returncode == 1
    assert subprocess.run(cmd + ["--skip-errors"], capture_output=True).returncode == 0


#: test_resume_after_kill kills each run a seeded random 0-KILL_WITHIN_S seconds after it listed
#: its first new recording: inside a recording's conversion, its rename or a manifest commit.
KILL_SEED, N_KILLS, KILL_WITHIN_S = 17, 4, 0.8


def _listed(store: Path) -> int:
    try:
        return len(json.loads((store / "manifest.json").read_text())["recordings"])
    except (FileNotFoundError, ValueError):  # not yet written, or being replaced
        return 0


def test_resume_after_kill(small_sample, tmp_path):
    """SIGKILL running conversions at several seeded random moments; after each the store is
    valid (everything listed reads in full), and a final run completes it bit-identically."""
    bids, full_store = small_sample
    root = _copy_bids(bids, tmp_path / "bids", ["eegmat00", "eegmat01", "eegmat28", "eegmat32", "eegbci001"])
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "brainfm.cli", "convert", str(root), str(store), "--workers", "1", "--no-progress"]
    n_total = len(discover(root))
    rng = random.Random(KILL_SEED)
    listed = []
    for _ in range(N_KILLS):
        start = _listed(store)
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _listed(store) <= start:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, KILL_WITHIN_S))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = ShardStore(store)
        listed.append(len(partial))
        for rid in partial.recording_ids:  # everything listed is complete and readable
            assert partial.recording(rid).read_all().shape[1] == partial.entry(rid)["n_samples"]
    assert any(0 < n < n_total for n in listed), f"no kill left a partial store ({listed} of {n_total} listed)"
    (store / "recordings" / ".tmp-leftover-deadbeef").mkdir(parents=True, exist_ok=True)
    before = ShardStore(store).recording_ids
    report = convert(root, store, workers=1, progress=False)
    assert report.ok
    assert set(report.skipped) == set(before)
    assert len(ShardStore(store)) == n_total
    assert not list((store / "recordings").glob(".tmp-*"))
    reference = ShardStore(full_store)
    for rid in ShardStore(store).recording_ids:
        np.testing.assert_array_equal(ShardStore(store).recording(rid).read_all(), reference.recording(rid).read_all())


def test_existing_dask_scheduler(small_sample, tmp_path):
    """``--scheduler``: conversion runs on a cluster that somebody else started."""
    from distributed import LocalCluster

    bids, _ = small_sample
    root = _copy_bids(bids, tmp_path / "bids", ["eegmat00", "kitmq"])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        report = convert(root, tmp_path / "store", scheduler=cluster.scheduler_address, progress=False)
    assert report.ok and len(report.converted) == 3


def test_presets_are_hashed():
    default = get_preset("eeg-fm")
    assert default.sfreq == 200 and (default.l_freq, default.h_freq) == (0.3, 75.0) and default.notch == "auto"
    assert default.hash != get_preset("eeg-fm-avgref").hash
    with pytest.raises(KeyError, match="available"):
        get_preset("nope")


def test_fsspec_url_store(small_sample, tmp_path):
    """Stores live at fsspec URLs (here ``memory://``, the same code path as ``s3://``)."""
    from brainfm.data import FixedWindows

    bids, full_store = small_sample
    root = _copy_bids(bids, tmp_path / "bids", ["eegmat00"])
    url = f"memory://brainfm-test-{tmp_path.name}/store"
    report = convert(root, url, workers=1, progress=False)
    assert report.ok, report.failed
    assert len(report.converted) == 2
    store = ShardStore(url)
    rid = "sub-eegmat00_task-rest_eeg"
    np.testing.assert_array_equal(store.recording(rid).read_all(), ShardStore(full_store).recording(rid).read_all())
    assert len(FixedWindows(store, 5.0)) == 36 + 12


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 server on loopback and an empty bucket; yields the bucket URL."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
        fsspec.filesystem("s3").mkdir("brainfm-test")
        yield "s3://brainfm-test"
    finally:
        server.stop()


def test_s3_store(small_sample, tmp_path, s3_bucket):
    """Convert into, and read from, an S3 API served locally (moto): object storage
    works with the same code, renames becoming copy-then-delete behind the manifest."""
    bids, full_store = small_sample
    root = _copy_bids(bids, tmp_path / "bids", ["kitmq", "eegmat00"])
    url = f"{s3_bucket}/store"
    report = convert(root, url, workers=1, progress=False)
    assert report.ok, report.failed
    store = ShardStore(url)
    assert len(store) == 3
    for rid in store.recording_ids:
        np.testing.assert_array_equal(store.recording(rid).read_all(), ShardStore(full_store).recording(rid).read_all())
    again = convert(root, url, workers=1, progress=False)
    assert len(again.skipped) == 3 and not again.converted
