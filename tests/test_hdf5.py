"""HDF5 corpora in the LaBraM layout, both ways, on real EEGMAT recordings.

The fixture plays the producer: it preprocesses three EEGMAT EDFs the way LaBraM's
``dataset_maker`` does (MNE band-pass 0.1-75 Hz, 50 Hz notch, 200 Hz, µV, upper-case names) and
writes them with h5py in LaBraM's layout. brainfm then imports that file without MNE.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import mne
import numpy as np
import pytest

from brainfm.cli import main
from brainfm.data import store_write
from brainfm.data.dataset import EntityLabels, FixedWindows
from brainfm.data.hdf5 import Hdf5LayoutError, export_store, export_windows, scan
from brainfm.data.store import FP16_MAX_REL_ERROR, ShardStore
from brainfm.data.store_verify import verify_store
from brainfm.data.store_write import commit, new_manifest
from brainfm.pipelines.hdf5_import import import_hdf5
from brainfm.pipelines.presets import get_preset

#: EEGMAT files the fixture converts: two subjects, rest and arithmetic for the first.
FILES = ("Subject00_1", "Subject00_2", "Subject01_1")
CROP_S, RATE, L_FREQ, H_FREQ = 40.0, 200, 0.1, 75.0


def _labram_signal(edf: Path) -> tuple[np.ndarray, list[str]]:
    """One EEGMAT recording preprocessed as LaBraM's ``preprocessing_edf`` does, in µV."""
    raw = mne.io.read_raw_edf(edf, preload=True, verbose="error")
    raw.drop_channels(["EEG A2-A1", "ECG ECG"])
    raw.filter(L_FREQ, H_FREQ, verbose="error").notch_filter(50.0, verbose="error")
    raw.resample(RATE, verbose="error").crop(0, CROP_S, include_tmax=False)
    return raw.get_data(units="uV"), [n.removeprefix("EEG ").upper() for n in raw.ch_names]


def _write_group(f: h5py.File, name: str, data: np.ndarray, names: list[str], **attrs) -> h5py.Dataset:
    """LaBraM's h5Dataset: a group, dataset ``eeg`` chunked by one second, its attributes."""
    dset = f.create_group(name).create_dataset("eeg", data=data, chunks=(data.shape[0], RATE))
    dset.attrs.update({"lFreq": L_FREQ, "hFreq": H_FREQ, "rsFreq": RATE, "chOrder": names, **attrs})
    return dset


@pytest.fixture(scope="module")
def labram_file(tmp_path_factory, shared_data) -> tuple[Path, dict[str, np.ndarray], list[str]]:
    """(file, signal per group, channel names) of the fixture file."""
    path = tmp_path_factory.mktemp("h5") / "eegmat.hdf5"
    signals = {}
    with h5py.File(path, "w") as f:
        for stem in FILES:
            signals[stem], names = _labram_signal(shared_data / "eegmat" / f"{stem}.edf")
            _write_group(f, stem, signals[stem], names)
    return path, signals, names


@pytest.fixture(scope="module")
def imported(labram_file, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("imported") / "store"
    report = import_hdf5(labram_file[0], store, progress=False)
    assert report.ok and sorted(report.imported) == sorted(FILES), report.failed
    return store


def test_import_keeps_the_signal_within_the_float16_bound(labram_file, imported):
    path, signals, names = labram_file
    store = ShardStore(imported)
    assert store.recording_ids == sorted(FILES) and store.preset["sfreq"] == RATE
    for stem, expected in signals.items():
        rec = store.recording(stem)
        assert rec.spec.ch_names == tuple(names) and rec.sfreq == RATE and rec.spec.ch_types == ("eeg",) * 19
        stored = rec.read_all()
        assert stored.shape == expected.shape == (19, int(CROP_S * RATE))
        # float16 rounding: relative 2**-11 plus float16's subnormal spacing (as tests/test_convert.py)
        tol = FP16_MAX_REL_ERROR * np.abs(expected) + 2.0**-24 * rec.scale[:, None]
        assert (np.abs(stored - expected) <= tol * 1.0001).all(), stem
    assert verify_store(imported).ok


def test_positions_come_from_the_conversion_montage_fallback(labram_file, imported, shared_data):
    """Upper-case LaBraM names (FP1, T3) get the montage positions of EEGMAT's own names (Fp1, T3),
    as ``brainfm convert`` fills them."""
    _, _, names = labram_file
    store = ShardStore(imported)
    rec = store.recording(FILES[0])
    fallback = rec.attrs["position_fallback"]
    assert store.entry(rec.id)["positions"] == f"montage:{fallback['montage']}"
    assert fallback["filled"] == names and not fallback["missing"]
    edf = mne.io.read_raw_edf(shared_data / "eegmat" / f"{FILES[0]}.edf", verbose="error")
    own = [n.removeprefix("EEG ") for n in edf.ch_names if n not in ("EEG A2-A1", "ECG ECG")]
    assert [n.upper() for n in own] == names and own != names
    info = mne.create_info(own, RATE, "eeg")
    info.set_montage(mne.channels.make_standard_montage(fallback["montage"]), match_case=True)
    np.testing.assert_allclose(rec.spec.positions, [ch["loc"][:3] for ch in info["chs"]], atol=1e-12)


def test_provenance_is_recorded(labram_file, imported):
    path = labram_file[0]
    store = ShardStore(imported)
    entry = store.entry("Subject00_2")
    assert entry["source"] == f"{path.name}::Subject00_2" and len(entry["source_sha256"]) == 64
    attrs = store.recording("Subject00_2").attrs
    hdf5 = attrs["hdf5"]
    assert hdf5["file"] == str(path.resolve()) and hdf5["group"] == "Subject00_2" and hdf5["dataset"] == "eeg"
    assert hdf5["attrs"]["rsFreq"] == RATE and hdf5["attrs"]["lFreq"] == L_FREQ and len(hdf5["attrs"]["chOrder"]) == 19
    assert attrs["filters"]["l_freq"] == L_FREQ and attrs["filters"]["h_freq"] == H_FREQ
    assert store.preset["name"] == "hdf5-import"
    assert (store.preset["l_freq"], store.preset["h_freq"]) == (L_FREQ, H_FREQ)
    assert json.loads(next(Path(imported, "reports").glob("import-hdf5-*.json")).read_text())["ok"]


def test_export_then_import_is_bit_identical(imported, tmp_path):
    out = tmp_path / "export.h5"
    assert main(["export-hdf5", str(imported), str(out), "--subjects", "Subject00_1", "Subject00_2"]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["Subject00_1", "Subject00_2"]  # only the selected subjects
        dset = f["Subject00_2/eeg"]
        assert dset.ndim == 2 and dset.chunks == (19, RATE) and dset.dtype == np.float32
        assert dset.attrs["rsFreq"] == RATE and dset.attrs["lFreq"] == L_FREQ
        assert list(dset.attrs["chOrder"])[0] == "FP1"
        assert f["Subject00_2"].attrs["subject"] == "Subject00_2" and f["Subject00_2"].attrs["units"] == "uV"
    again = tmp_path / "again"
    assert main(["import-hdf5", str(out), str(again), "--no-progress"]) == 0
    first, second = ShardStore(imported), ShardStore(again)
    assert second.recording_ids == ["Subject00_1", "Subject00_2"]
    for rid in second.recording_ids:
        np.testing.assert_array_equal(second.recording(rid).read_all(), first.recording(rid).read_all())
        assert second.recording(rid).spec.ch_names == first.recording(rid).spec.ch_names
        np.testing.assert_array_equal(second.recording(rid).spec.loc, first.recording(rid).spec.loc)
    with pytest.raises(FileExistsError, match="export.h5 exists"):
        export_store(imported, out)


def test_rerun_skips_up_to_date_and_other_presets_are_refused(labram_file, imported, tmp_path):
    report = import_hdf5(labram_file[0], imported, progress=False)
    assert report.ok and sorted(report.skipped) == sorted(FILES) and not report.imported
    converted = tmp_path / "converted"  # a store `brainfm convert` started with its default preset
    preset = get_preset("eeg-fm")
    commit(str(converted), new_manifest(preset.to_dict(), preset.hash))
    with pytest.raises(ValueError, match="built with preset 'eeg-fm'"):
        import_hdf5(labram_file[0], converted, progress=False)


def _bad_file(path: Path, labram_file, damage: str) -> Path:
    """The fixture file with one group damaged in one way."""
    src, signals, names = labram_file
    shutil.copy(src, path)
    with h5py.File(path, "a") as f:
        dset = f["Subject00_2/eeg"]
        if damage == "missing attribute":
            del dset.attrs["rsFreq"]
        elif damage == "unknown channel":
            dset.attrs["chOrder"] = names[:-1] + ["EEG A2-A1"]
        elif damage == "wrong rank":
            del f["Subject00_2"]
            f.create_group("Subject00_2").create_dataset("eeg", data=signals["Subject00_2"][None])
        elif damage == "transposed":
            del f["Subject00_2"]
            f.create_group("Subject00_2").create_dataset("eeg", data=signals["Subject00_2"][:, :300].T)
            f["Subject00_2/eeg"].attrs.update({"rsFreq": RATE, "chOrder": names})
        elif damage == "volts":
            dset[...] = dset[...] * 1e-6
    return path


@pytest.mark.parametrize("damage, message", [
    ("missing attribute", "missing attribute 'rsFreq' or 'sFreq'"),
    ("unknown channel", "EEG A2-A1 have no position in the colin27_1005 montage"),
    ("wrong rank", r"has shape \(1, 19, 8000\) \(rank 3\), expected \(channels, time\)"),
    ("transposed", "is it transposed"),
    ("volts", "not physical.*pass --scale 1e6"),
])
def test_bad_groups_fail_naming_the_file_and_the_rest_import(labram_file, tmp_path, capsys, damage, message):
    path = _bad_file(tmp_path / "bad.h5", labram_file, damage)
    store = tmp_path / "store"
    assert main(["import-hdf5", str(path), str(store), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {path}::/Subject00_2" in err and err.count("FAILED") == 1
    report = import_hdf5(path, store, progress=False)
    (failure,) = report.failed
    assert failure["id"] == "Subject00_2" and str(path) in failure["error"]
    assert re.search(message, failure["error"]), failure["error"]
    assert ShardStore(store).recording_ids == ["Subject00_1", "Subject01_1"]


def test_options_for_unpositioned_channels_and_volts(labram_file, tmp_path):
    store = tmp_path / "kept"
    report = import_hdf5(_bad_file(tmp_path / "a.h5", labram_file, "unknown channel"), store,
                         keep_unpositioned=True, progress=False)
    assert report.ok
    rec = ShardStore(store).recording("Subject00_2")
    assert ShardStore(store).entry(rec.id)["positions"].startswith("partial-montage:")
    assert np.isnan(rec.spec.positions[-1]).all() and not np.isnan(rec.spec.positions[:-1]).any()
    volts = tmp_path / "volts.h5"  # every group in volts, as MNE's get_data() gives by default
    shutil.copy(labram_file[0], volts)
    with h5py.File(volts, "a") as f:
        for stem in FILES:
            f[stem]["eeg"][...] = f[stem]["eeg"][...] * 1e-6
    report = import_hdf5(volts, tmp_path / "v", scale=1e6, progress=False)
    assert report.ok and len(report.imported) == 3


def test_files_that_are_not_in_the_layout_are_named(tmp_path, capsys):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(Hdf5LayoutError, match=f"{text} is not an HDF5 file"):
        scan(text)
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    assert main(["import-hdf5", str(empty), str(tmp_path / "store")]) == 1
    assert f"{empty} holds no group" in capsys.readouterr().err
    with pytest.raises(Hdf5LayoutError, match="no such file"):
        scan(tmp_path / "missing.h5")


def test_an_interrupted_import_never_lists_a_half_written_recording(labram_file, tmp_path, monkeypatch):
    """Interrupt the second recording after its signal is written, before its rename; then leave
    a dead writer's temporary group behind. Readers see only complete recordings; the next run
    cleans up and completes the store."""
    path = labram_file[0]
    store = tmp_path / "store"
    hashes, calls = store_write._file_hashes, []

    def interrupt_second(fs, group, array):
        calls.append(group)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return hashes(fs, group, array)

    monkeypatch.setattr(store_write, "_file_hashes", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        import_hdf5(path, store, progress=False)
    monkeypatch.undo()
    partial = ShardStore(store)
    assert partial.recording_ids == [FILES[0]]  # listed: the one written completely
    assert sorted(p.name for p in (store / "recordings").iterdir()) == [FILES[0]]  # the temporary is gone
    assert verify_store(store).ok
    # a killed writer leaves its temporary group: complete-looking, but never listed
    shutil.copytree(store / "recordings" / FILES[0], store / "recordings" / f".tmp-{FILES[1]}-deadbeef")
    assert ShardStore(store).recording_ids == [FILES[0]]
    report = import_hdf5(path, store, progress=False)
    assert report.skipped == [FILES[0]] and report.imported == list(FILES[1:])
    assert not list((store / "recordings").glob(".tmp-*")) and verify_store(store).ok
    assert ShardStore(store).recording_ids == sorted(FILES)


def test_a_window_selection_is_exported_as_one_labelled_array(small_sample, tmp_path, capsys):
    """`export-hdf5 --window-s` writes the windows a loader selects (here 5-s windows of two real EEGMAT
    subjects labelled by task) as one (W, C, T) array, window for window what FixedWindows reads."""
    store = str(small_sample[1])
    out = tmp_path / "windows.h5"
    assert main(["export-hdf5", store, str(out), "--subjects", "eegmat00", "eegmat01", "--window-s", "5",
                 "--stride-s", "2.5", "--label-by", "task", "--no-progress"]) == 0
    assert "windows by task: arithmetic 46, rest 142" in capsys.readouterr().out
    ids = ShardStore(store).select(["eegmat00", "eegmat01"])
    want = FixedWindows(store, 5.0, 2.5, recordings=ids, channel_types=("eeg",),
                        labels=EntityLabels("task", {"arithmetic": 0, "rest": 1}))
    with h5py.File(out, "r") as f:
        x = f["eeg"]
        assert x.shape == (len(want), 19, 1000) and x.chunks == (1, 19, 1000) and x.dtype == np.float32
        assert list(x.attrs["chOrder"]) == list(want.specs[0].ch_names) and x.attrs["rsFreq"] == 200
        assert list(f["label"].attrs["classes"]) == ["arithmetic", "rest"]
        np.testing.assert_array_equal(f["label"][:], want.labels)
        assert sorted(set(f["label"][:].tolist())) == [0, 1] and f.attrs["layout"] == "brainfm-windows"
        for k in (0, len(want) // 2, len(want) - 1):
            sample = want[k]
            np.testing.assert_array_equal(x[k], sample["x"].numpy())
            assert f["recording"][k].decode() == sample["recording"] and f["start"][k] == sample["start"]
            assert f["subject"][k].decode() == sample["subject"]
    assert main(["export-hdf5", store, str(tmp_path / "w.h5"), "--label-by", "task"]) == 2
    assert "need --window-s" in capsys.readouterr().err


def test_a_window_selection_of_two_montages_is_refused(small_sample, tmp_path):
    store = ShardStore(str(small_sample[1]))
    eegmat = [rid for rid in store.recording_ids if store.entry(rid).get("subject") == "eegmat00"]
    other = [rid for rid in store.recording_ids if len(store.recording(rid).spec.ch_names) != 19
             and "eeg" in store.recording(rid).spec.ch_types]
    assert other, "the sample store holds EEG recordings of other montages (EEGMMIDB, the BrainVision example)"
    with pytest.raises(ValueError, match="do not share one channel list"):
        export_windows(FixedWindows(store, 1.0, recordings=eegmat + other[:1], channel_types=("eeg",)),
                       tmp_path / "mixed.h5")
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_an_interrupted_window_export_leaves_no_file(small_sample, tmp_path, monkeypatch):
    """A window export that fails halfway (a damaged chunk, Ctrl-C) leaves neither the target file
    nor its temporary file behind."""
    store = ShardStore(str(small_sample[1]))
    windows = FixedWindows(store, 5.0, recordings=store.select(["eegmat00"]), channel_types=("eeg",))
    read = FixedWindows.__getitem__

    def failing(self, k):
        if k == 3:
            raise OSError("damaged chunk")
        return read(self, k)

    monkeypatch.setattr(FixedWindows, "__getitem__", failing)
    with pytest.raises(OSError, match="damaged chunk"):
        export_windows(windows, tmp_path / "windows.h5")
    assert not list(tmp_path.iterdir())
