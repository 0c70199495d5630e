"""Bad input, faults and attacks (issue #17), on real recordings: each case asserts the message a
person reads and that nothing outside the dataset is read or stored, and that no stored data
changed or vanished.

The cases and what brainfm does are listed in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from fsspec.implementations.local import LocalFileSystem
from mne_bids import BIDSPath, read_raw_bids, write_raw_bids

from brainfm.data import FixedWindows
from brainfm.data.store import ShardStore, StoreError, StoreLocked, store_fs
from brainfm.data.store_lock import store_lock
from brainfm.data.store_verify import verify_store
from brainfm.data.store_write import commit, rewrite_recording
from brainfm.deploy import load, quantize, save_bundle
from brainfm.models import BrainDecoder, ModelConfig
from brainfm.pipelines.bids_io import (ConversionError, discover, recording_id, referenced_files, source_checksum,
                                       source_files)
from brainfm.pipelines.convert import convert
from brainfm.pipelines.sample import build_sample, sample_complete, sample_store
from brainfm.pipelines.targets import precompute_targets

VHDR = "sub-brainvision/eeg/sub-brainvision_task-test_eeg.vhdr"
SET = "sub-eeglab/eeg/sub-eeglab_task-tutorial_eeg.set"
RECORDING = "sub-brainvision_task-test_eeg"


@pytest.fixture
def bids(small_sample, tmp_path) -> Path:
    """A BIDS dataset of two real recordings (BrainVision, EEGLAB), and a secret beside it."""
    root = _copy_subjects(small_sample[0], tmp_path / "bids", ("sub-brainvision", "sub-eeglab"))
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


# --------------------------------------------------------------------------------------
# Silent data loss, garbage as signal and readable errors (issue #17 items 3-8, 10)
# --------------------------------------------------------------------------------------
REST = "sub-eegmat00_task-rest_eeg"
REST_EDF = "sub-eegmat00/eeg/sub-eegmat00_task-rest_eeg.edf"
BRAINFM = [sys.executable, "-m", "brainfm.cli"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*BRAINFM, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def eeg(small_sample, tmp_path) -> Path:
    """A BIDS dataset of real recordings: EEGMAT subject 0 (EDF, 2 runs) and BrainVision."""
    return _copy_subjects(small_sample[0], tmp_path / "eeg", ("sub-eegmat00", "sub-brainvision"))


def _copy_subjects(src: Path, root: Path, subjects: tuple[str, ...]) -> Path:
    """A copy of the BIDS dataset ``src`` with only ``subjects``."""
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("sub-*"))
    for sub in subjects:
        shutil.copytree(src / sub, root / sub)
    return root


def _converted(root: Path, store: Path, **kwargs) -> dict[str, np.ndarray]:
    report = convert(root, store, workers=1, progress=False, **kwargs)
    assert report.ok, report.failed
    return _signals(store)


def _signals(store: Path) -> dict[str, np.ndarray]:
    """Every listed recording's decoded signal: what 'no stored data changed or vanished' compares."""
    s = ShardStore(store)
    return {rid: s.recording(rid).read_all() for rid in s.recording_ids}


def _same(store: Path, before: dict[str, np.ndarray], *, but: tuple[str, ...] = ()) -> None:
    after = _signals(store)
    assert set(after) == set(before), (sorted(after), sorted(before))
    for rid in before:
        if rid not in but:
            np.testing.assert_array_equal(after[rid], before[rid], err_msg=rid)


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- item 3: a missing or corrupt chunk -------------------------------------------------
def test_missing_chunk_is_an_error_verify_names_it_and_convert_remakes_it(eeg, tmp_path):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    chunk = store / "recordings" / REST / "data/c/0/0"  # format 3: the recording's one shard
    chunk.unlink()
    with pytest.raises(StoreError, match=r"recordings/sub-eegmat00_task-rest_eeg/data/c/0/0: missing"):
        ShardStore(store).recording(REST).read(0, ShardStore(store).entry(REST)["n_samples"])
    out = _cli("verify", str(store))
    assert out.returncode == 1
    assert f"DAMAGED {REST}: {chunk}: missing" in out.stderr and "brainfm convert" in out.stderr
    assert "1 damaged" in out.stdout
    others = {k: v for k, v in before.items() if k != REST}
    s = ShardStore(store)
    for rid, samples in others.items():  # the others read as before
        np.testing.assert_array_equal(s.recording(rid).read_all(), samples)
    report = convert(eeg, store, workers=1, progress=False)
    assert report.converted == [REST] and "c/0/0: missing" in report.remade[REST][0]
    _same(store, before)  # re-made bit-identical
    assert _cli("verify", str(store)).returncode == 0


def test_corrupt_chunk_names_the_file_and_convert_verify_remakes_it(eeg, tmp_path):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    chunk = store / "recordings" / REST / "data/c/0/0"
    chunk.write_bytes(b"\xff" * chunk.stat().st_size)  # same size: only the hash can tell
    with pytest.raises(StoreError, match=r"data/c/0/0: cannot be decoded .*brainfm verify"):
        ShardStore(store).recording(REST).read_all()
    assert _cli("verify", str(store), "--quick").returncode == 0  # sizes match
    out = _cli("verify", str(store))
    assert out.returncode == 1 and f"{chunk}: corrupt (SHA-256" in out.stderr
    assert convert(eeg, store, workers=1, progress=False).converted == []  # the quick check cannot see it
    report = convert(eeg, store, workers=1, progress=False, verify=True)
    assert report.converted == [REST]
    _same(store, before)


def test_entry_whose_group_is_gone_is_remade_or_unlisted(eeg, tmp_path):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    shutil.rmtree(store / "recordings" / REST)
    with pytest.raises(StoreError, match=f"recordings/{REST}: the manifest lists recording .* group is missing"):
        ShardStore(store).recording(REST)
    assert convert(eeg, store, workers=1, progress=False).converted == [REST]
    _same(store, before)
    # group and source both gone: the entry is unlisted, the others stay
    shutil.rmtree(store / "recordings" / REST)
    for f in (eeg / "sub-eegmat00/eeg").glob("sub-eegmat00_task-rest_*"):
        f.unlink()
    report = convert(eeg, store, workers=1, progress=False)
    assert report.removed == [REST] and not report.converted
    _same(store, {k: v for k, v in before.items() if k != REST})


def test_format1_recording_still_reads_and_a_missing_chunk_is_an_error(eeg, tmp_path):
    """A format-1 recording (no hashes, fill value 0) reads; verify says what it checked."""
    store = tmp_path / "store"
    before = _converted(eeg, store)
    rewrite_recording(str(store), REST, format_version=2)  # one object per chunk, as format 1 had
    group = store / "recordings" / REST
    meta = json.loads((group / "zarr.json").read_text())
    for key in ("files", "quality", "dropped_channels"):
        meta["attributes"].pop(key)
    meta["attributes"]["format_version"] = 1
    (group / "zarr.json").write_text(json.dumps(meta))
    array = json.loads((group / "data/zarr.json").read_text())
    array["fill_value"] = 0.0
    (group / "data/zarr.json").write_text(json.dumps(array))
    manifest = json.loads((store / "manifest.json").read_text())
    for key in ("format_version", "group_sha256", "n_chunks", "flagged_channels", "n_warnings"):
        manifest["recordings"][REST].pop(key)
    (store / "manifest.json").write_text(json.dumps(manifest))
    _same(store, before)
    result = verify_store(str(store))
    assert result.ok and result.notes[REST] == ["format 1: no recorded hashes; checked that every chunk exists and decodes"]
    (group / "data/c/0/3").unlink()
    with pytest.raises(StoreError, match=r"data/c/0/3: missing"):
        ShardStore(store).recording(REST).read_all()
    assert verify_store(str(store)).problems[REST] == [f"{group}/data/c/0/3: missing"]


# -- item 4: concurrent runs --------------------------------------------------------------
def test_a_second_convert_fails_clearly_and_spares_the_first_runs_temporaries(eeg, tmp_path):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    live = store / "recordings" / ".tmp-sub-x_task-y_eeg-0123abcd"  # a live run's group being written
    with store_lock(str(store), command="convert"):
        live.mkdir()
        out = _cli("convert", str(eeg), str(store), "--workers", "1", "--no-progress")
        assert out.returncode == 1 and live.is_dir()
        line = _one_line(out.stderr)
        assert f"{store} is being written by brainfm convert (pid {os.getpid()}" in line and "--wait" in line
        _same(store, before)
        live.rmdir()


def test_two_concurrent_converts_both_land_in_the_manifest(eeg, bids, tmp_path):
    """Two runs from two datasets into one store at once: the second waits, nothing is lost."""
    store = tmp_path / "store"
    runs = [subprocess.Popen([*BRAINFM, "convert", str(root), str(store), "--workers", "1", "--no-progress",
                              "--wait", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for root in (eeg, bids)]
    outs = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    expected = {recording_id(p) for root in (eeg, bids) for p in discover(root)}
    assert set(ShardStore(store).recording_ids) == expected
    assert verify_store(str(store)).ok


def test_object_store_lock_is_a_lease(tmp_path, monkeypatch):
    """On object stores (here memory://, the same code path as s3://) the lock is a lease object
    created only if absent; a live one refuses a second writer, a stale one is taken over."""
    url = f"memory://brainfm-lock-{tmp_path.name}/store"
    with store_lock(url, command="convert"):
        with pytest.raises(StoreLocked, match=rf"{url} is being written by brainfm convert \(pid {os.getpid()}.*"
                                              r"after waiting 0.2 s; wait for it to finish, or pass --wait"):
            with store_lock(url, timeout=0.2):
                pass
    with store_lock(url):  # released
        pass
    fs, root = store_fs(url)
    fs.pipe_file(f"{root}/.lock.json", json.dumps({"pid": 1, "heartbeat": time.time() - 3600}).encode())
    with store_lock(url, timeout=0):  # a dead writer's lease (no heartbeat for an hour)
        assert json.loads(fs.cat_file(f"{root}/.lock.json"))["pid"] == os.getpid()
    assert not fs.exists(f"{root}/.lock.json")


# -- item 5: an interrupted first sample build ----------------------------------------------
SAMPLE_ARGS = {"eegmat_subjects": [0, 1], "eegbci_runs": [], "formats": False}


def test_interrupted_sample_build_is_completed_not_used(tmp_path):
    dest = tmp_path / "sample"
    code = ("import sys; from brainfm.pipelines.sample import build_sample; "
            f"build_sample(sys.argv[1], workers=1, progress=False, **{SAMPLE_ARGS!r})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], start_new_session=True)
    manifest = dest / "store" / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text() or "{}").get("recordings"):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ShardStore(dest / "store")
    assert 1 <= len(partial) < 4, "the kill came too late to test resuming"
    assert not sample_complete(dest, {**SAMPLE_ARGS, "excerpts": [], "version": 2})
    store = sample_store(dest, workers=1, progress=False, **SAMPLE_ARGS)
    assert len(ShardStore(store)) == 4 and sample_complete(dest, {**SAMPLE_ARGS, "excerpts": [], "version": 2})
    for rid in partial.recording_ids:  # what was there is kept, not re-made
        np.testing.assert_array_equal(ShardStore(store).recording(rid).read_all(), partial.recording(rid).read_all())


# -- item 6: warnings reach the report ------------------------------------------------------
def test_truncated_edf_is_stored_with_a_recorded_warning(eeg, tmp_path):
    edf = eeg / REST_EDF
    edf.write_bytes(edf.read_bytes()[: edf.stat().st_size // 2])
    store = tmp_path / "store"
    out = _cli("convert", str(eeg), str(store), "--workers", "1", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert f"{REST}: Number of records from the header does not match the file size" in out.stdout
    report = json.loads(next((store / "reports").glob("convert-*.json")).read_text())
    assert any("does not match the file size" in w for w in report["warnings"][REST])
    rec = ShardStore(store).recording(REST)
    assert any("does not match the file size" in w for w in rec.warnings)
    assert 80 * 200 < rec.n_samples < 100 * 200  # about half of 182 s


def test_channels_tsv_mismatch_and_unknown_channel_types_are_reported(eeg, tmp_path):
    channels = eeg / "sub-brainvision/eeg/sub-brainvision_task-test_channels.tsv"
    rows = channels.read_text(encoding="utf-8").splitlines()
    unknown = [r.split("\t")[0] for r in rows[1:4]]
    rows[1:4] = [r.replace("\tEEG\t", "\tFOO\t", 1) for r in rows[1:4]]
    channels.write_text("\n".join(rows) + "\n", encoding="utf-8")
    store = tmp_path / "store"
    report = convert(eeg, store, workers=1, progress=False)
    warned = report.warnings[RECORDING]
    assert any('No BIDS -> MNE mapping found for channel type "FOO"' in w for w in warned), warned
    rec = ShardStore(store).recording(RECORDING)
    assert set(unknown) <= set(rec.attrs["dropped_channels"]) and not set(unknown) & set(rec.spec.ch_names)
    # one row fewer than the data has channels
    channels.write_text("\n".join(rows[:1] + rows[4:]) + "\n", encoding="utf-8")
    report = convert(eeg, store, workers=1, progress=False)
    assert report.converted == [RECORDING]
    assert any("does not match the number of channels" in w for w in report.warnings[RECORDING])


# -- item 7: stale and colliding entries ----------------------------------------------------
def test_target_set_is_unlisted_when_a_recording_is_remade(eeg, tmp_path):
    store = tmp_path / "store"
    _converted(eeg, store)
    key = precompute_targets(str(store), 1.0, progress=False)
    assert key in ShardStore(store).target_sets and verify_store(str(store)).ok
    before = _signals(store)
    eeg_file = eeg / "sub-brainvision/eeg/sub-brainvision_task-test_eeg.eeg"
    data = bytearray(eeg_file.read_bytes())
    data[1000] ^= 1
    eeg_file.write_bytes(bytes(data))
    report = convert(eeg, store, workers=1, progress=False)
    assert report.converted == [RECORDING] and report.dropped_target_sets == [key]
    assert ShardStore(store).target_sets == {} and verify_store(str(store)).ok
    _same(store, before, but=(RECORDING,))


def test_two_sources_for_one_recording_id_are_refused(eeg, tmp_path):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    twin = eeg / "sub-brainvision/eeg/sub-brainvision_task-test_eeg.edf"
    shutil.copy(eeg / REST_EDF, twin)  # a real EDF under the BrainVision recording's name
    report = convert(eeg, store, workers=1, progress=False)
    assert {f["id"] for f in report.failed} == {RECORDING} and len(report.failed) == 2
    message = report.failed[0]["error"]
    assert "2 source files map to recording id 'sub-brainvision_task-test_eeg'" in message
    assert str(twin) in message and "sub-brainvision_task-test_eeg.vhdr" in message
    _same(store, before)  # the stored recording is left as it is


def test_sample_data_with_fewer_subjects_removes_the_others(tmp_path):
    dest = tmp_path / "sample"
    store, report = build_sample(dest, workers=1, progress=False, **SAMPLE_ARGS)
    assert report.ok and len(ShardStore(store)) == 4
    kept = {rid: v for rid, v in _signals(store).items() if "eegmat00" in rid}
    store, report = build_sample(dest, workers=1, progress=False, **{**SAMPLE_ARGS, "eegmat_subjects": [0]})
    assert sorted(report.removed) == ["sub-eegmat01_task-arithmetic_eeg", "sub-eegmat01_task-rest_eeg"]
    assert not (store / "recordings" / "sub-eegmat01_task-rest_eeg").exists()
    _same(store, kept)


# -- item 8: garbage accepted as signal -------------------------------------------------------
def _garbage(root: Path, edit) -> tuple[str, str | None]:
    """Write 20 s of real EEGMAT (subject 0, rest) edited by ``edit(data, names)`` as a new BIDS
    recording; return its id and the channel the edit names."""
    path = BIDSPath(subject="eegmat00", task="rest", datatype="eeg", root=root)
    raw = read_raw_bids(path, verbose="error").crop(0, 20).load_data(verbose="error")
    raw.pick([n for n, t in zip(raw.ch_names, raw.get_channel_types()) if t == "eeg"])
    channel = edit(raw._data, raw.ch_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_raw_bids(raw, BIDSPath(subject="garbage", task="rest", datatype="eeg", root=root), format="BrainVision",
                       allow_preload=True, overwrite=True, verbose="error")
    return "sub-garbage_task-rest_eeg", channel


def _zero(data, names):
    data[:] = 0.0


def _flat(data, names):
    data[3] = 1e-5  # a constant 10 µV
    return names[3]


def _spike(data, names):
    data[5, 2000] = 0.5  # one sample of 0.5 V on a ~10 µV channel
    return names[5]


def _volts_as_microvolts(data, names):
    data *= 1e6  # the header's scaling is off by 10^6


@pytest.mark.parametrize("edit, stored, message", [
    (_zero, False, "every sample of every kept channel is zero: no signal to store"),
    (_volts_as_microvolts, False, "eeg amplitudes are not physical: median |x| = "),
    (_flat, True, "1 channel(s) flagged flat: {}"),
    (_spike, True, "1 channel(s) flagged spikes: {}"),
], ids=["all-zero", "units", "flat", "spikes"])
def test_garbage_is_refused_or_flagged(eeg, tmp_path, edit, stored, message):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    rid, name = _garbage(eeg, edit)
    message = message.format(name)
    report = convert(eeg, store, workers=1, progress=False)
    if not stored:
        assert report.failed == [{"id": rid, "source": f"sub-garbage/eeg/{rid}.vhdr", "error": report.failed[0]["error"]}]
        assert message in report.failed[0]["error"]
        _same(store, before)
        return
    assert report.ok and report.converted == [rid] and message in report.warnings[rid]
    rec = ShardStore(store).recording(rid)
    reason = message.split("flagged ")[1].split(":")[0]
    assert rec.flags == {name: [reason]} and ShardStore(store).entry(rid)["flagged_channels"] == {name: [reason]}
    assert list(rec.usable) == [n != name for n in rec.spec.ch_names]
    windows = FixedWindows(ShardStore(store), 2.0, recordings=[rid])  # the loaders leave the flagged channel out
    assert name not in windows.specs[0].ch_names and windows[0]["x"].shape[0] == len(rec.spec.ch_names) - 1
    _same(store, {**before, rid: rec.read_all()})


# -- item 10: errors a person can read --------------------------------------------------------
def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    out = _cli("info", str(tmp_path))
    assert out.returncode == 1
    assert _one_line(out.stderr) == (f"brainfm info: {tmp_path} is not a brainfm store (no manifest.json); create one "
                                     "with `brainfm convert BIDS_ROOT STORE` (--debug shows the traceback)")
    out = _cli("info", str(tmp_path), "--debug")
    assert out.returncode == 1 and "Traceback" in out.stderr and "FileNotFoundError" in out.stderr


def test_ctrl_c_exits_130_with_one_line_and_a_valid_store(eeg, tmp_path):
    store = tmp_path / "store"
    proc = subprocess.Popen([*BRAINFM, "convert", str(eeg), str(store), "--workers", "1", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (store / "recordings").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _one_line(err) == "brainfm convert: interrupted"
    partial = ShardStore(store)  # valid, and what it lists reads
    for rid in partial.recording_ids:
        partial.recording(rid).read_all()


@pytest.mark.parametrize("sidecar, edit, message", [
    ("sub-eegmat00_task-rest_eeg.json", lambda t: t.replace("50.0", "0.1"),
     "PowerLineFrequency 0.1 Hz makes no sense"),
    ("sub-eegmat00_task-rest_eeg.json", lambda t: t[:-3], "is not valid JSON"),
    ("sub-eegmat00_task-rest_channels.tsv", lambda t: t.replace("\tn/a\n", "\tn/a\textra\n", 1),
     "line 2: 10 tab-separated columns, the header has 9"),
], ids=["line-frequency", "json", "tsv"])
def test_a_bad_sidecar_is_named_in_one_short_message(eeg, tmp_path, sidecar, edit, message):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    path = eeg / "sub-eegmat00/eeg" / sidecar
    path.write_text(edit(path.read_text()))
    out = _cli("convert", str(eeg), str(store), "--workers", "1", "--no-progress")
    assert out.returncode == 1
    failed = [ln for ln in out.stderr.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and str(path) in failed[0] and message in failed[0] and len(failed[0]) < 500, out.stderr
    assert failed[0].endswith("the recording stored from the previous source is kept")
    _same(store, before)  # the stored recording stays, listed, until its source is fixed


def test_corrupt_manifest_is_named_and_left_alone(eeg, tmp_path):
    store = tmp_path / "store"
    _converted(eeg, store)
    (store / "manifest.json").write_text('{"format": "brainfm-shards", "recordings": {')
    groups = sorted(p.name for p in (store / "recordings").iterdir())
    for args in (("info", str(store)), ("verify", str(store)),
                 ("convert", str(eeg), str(store), "--workers", "1", "--no-progress")):
        out = _cli(*args)
        assert out.returncode == 1
        assert f"{store}/manifest.json is corrupt (" in _one_line(out.stderr) and "restore it" in out.stderr
    assert (store / "manifest.json").read_text().endswith('"recordings": {')  # convert did not replace it
    assert sorted(p.name for p in (store / "recordings").iterdir()) == groups


@pytest.mark.parametrize("args, message", [
    (("--targets", "0"), "--targets must be a window length > 0 s, got 0"),
    (("--targets", "2", "--targets-stride", "-1"), "--targets-stride needs --targets and must be > 0 s"),
    (("--report", "{tmp}"), "--report {tmp} is a folder; give a file name"),
    (("--report", "{tmp}/no/such/report.json"), "folder {tmp}/no/such does not exist"),
    (("--workers", "0"), "--workers must be at least 1"),
    (("--targets-normalize", "align"), "--targets-normalize needs --targets"),
    (("--targets", "2", "--targets-stats-source", "calibration"), "--targets-stats-source needs --targets-normalize"),
    (("--targets", "2", "--targets-normalize", "align", "--targets-stats-seconds", "30"),
     "--targets-stats-seconds needs --targets-stats-source calibration"),
], ids=["targets-0", "stride", "report-folder", "report-parent", "workers-0", "normalize-without-targets",
        "stats-source-without-normalize", "seconds-without-calibration"])
def test_arguments_are_checked_before_converting(bids, tmp_path, args, message):
    store = tmp_path / "store"
    args = tuple(a.replace("{tmp}", str(tmp_path)) for a in args)
    out = _cli("convert", str(bids), str(store), *args)
    assert out.returncode == 2
    assert message.replace("{tmp}", str(tmp_path)) in _one_line(out.stderr)
    assert not store.exists()


def test_stray_temporary_manifests_are_cleaned_up(eeg, tmp_path, monkeypatch):
    store = tmp_path / "store"
    before = _converted(eeg, store)
    manifest = (store / "manifest.json").read_bytes()
    fs = LocalFileSystem()

    def broken_mv(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(LocalFileSystem, "mv", broken_mv)
    with pytest.raises(OSError, match="disk full"):
        commit(str(store), json.loads(manifest))
    monkeypatch.undo()
    assert not list(store.glob(".manifest.json.*")) and (store / "manifest.json").read_bytes() == manifest
    fs.pipe_file(str(store / ".manifest.json.0badf00d"), b"{}")  # left by a writer killed mid-commit
    convert(eeg, store, workers=1, progress=False)
    assert not list(store.glob(".manifest.json.*"))
    _same(store, before)


def test_every_test_the_reliability_table_names_exists():
    """``docs/reliability.md`` names a test per row; a row whose test was renamed or moved would vouch for nothing."""
    tests = Path(__file__).parent
    table = (tests.parent / "docs" / "reliability.md").read_text()
    cited = re.findall(r"`(?:tests/(test_\w+\.py)::)?(test_\w+)`", table)
    assert len(cited) > 30
    missing = [f"{file or 'test_reliability.py'}::{name}" for file, name in cited
               if f"def {name}(" not in (tests / (file or "test_reliability.py")).read_text()]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_template_positions_beside_unread_electrodes_files_are_reported(shared_data, tmp_path):
    """mne-bids's tiny_bids ships two electrodes.tsv for one recording (one in CapTrak space);
    mne-bids then reads neither, so the template positions that fill in must say so."""
    report = convert(shared_data / "eeg" / "bids" / "tiny_bids", tmp_path / "store", workers=1, progress=False)
    assert report.ok, report.failed
    (rid,) = report.converted
    assert ShardStore(tmp_path / "store").entry(rid)["positions"].startswith(("montage:", "partial-montage:"))
    assert any("not from sub-01_ses-eeg_electrodes.tsv, sub-01_ses-eeg_space-CapTrak_electrodes.tsv: mne-bids read "
               "none of them (more than one matches this recording)" in w for w in report.warnings[rid]), \
        report.warnings[rid]
    # its HED tags: said as what they mean for the conversion, not as mne-bids' install instructions
    assert any(w.startswith("HED tags in the events were not read") for w in report.warnings[rid])
    assert not any("could not be imported" in w for w in report.warnings[rid]), report.warnings[rid]


def test_convert_refuses_a_missing_source_and_a_folder_that_is_not_a_store(eeg, tmp_path):
    """A mistyped source says it does not exist; a store is never written into a folder that holds
    other things (e.g. the output folder of an export), and that folder is left as it was."""
    out = _cli("convert", str(tmp_path / "nonexistent"), str(tmp_path / "store"))
    assert out.returncode == 1 and f"no such folder: {tmp_path / 'nonexistent'}" in _one_line(out.stderr)
    busy = tmp_path / "exports"
    busy.mkdir()
    (busy / "decoder.onnx").write_bytes(b"onnx")
    with pytest.raises(ValueError, match=r"exports is not a brainfm store and is not empty \(it holds decoder.onnx\)"):
        convert(eeg, busy, workers=1, progress=False)
    assert sorted(p.name for p in busy.iterdir()) == ["decoder.onnx"]  # nothing written, not even a lock
