"""Windows, batches, splits and data modules on the real sample store."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from brainfm.data import (
    EntityLabels,
    EventWindows,
    FixedWindows,
    ShardStore,
    ShuffledWindows,
    collate_windows,
    eegmat_cbramod,
    kfold_subjects,
    leave_one_subject_out,
    random_split,
)
from brainfm.data.datamodule import DecodingDataModule, PretrainDataModule
from brainfm.data.store import decode_signal, encode_signal
from brainfm.data.store_verify import verify_store
from brainfm.pipelines.targets import precompute_targets
from brainfm.targets import TargetSpec, compute_targets

EEGMAT_LABELS = EntityLabels("task", {"rest": 0, "arithmetic": 1})


def test_encoding_error_bound_and_large_values():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 50, (3, 5000)), rng.normal(0, 2e5, (1, 5000))]).astype(np.float32)
    enc, scale = encode_signal(x)
    assert enc.dtype == np.float16 and scale.tolist()[:3] == [1.0, 1.0, 1.0] and scale[3] > 1
    assert np.log2(scale[3]).is_integer()  # power of two: no extra rounding
    back = decode_signal(enc, scale)
    assert np.isfinite(back).all()
    big = np.abs(x) > 1e-3
    assert (np.abs(back - x)[big] / np.abs(x)[big]).max() <= 2.0**-11
    with pytest.raises(ValueError, match="NaN"):
        encode_signal(np.array([[1.0, np.nan]]))


def test_fixed_window_counts(small_sample):
    _, url = small_sample
    store = ShardStore(url)
    ds = FixedWindows(store, window_s=5.0, stride_s=2.5, channel_types=["eeg"])
    expected = 0
    for rid in ds.recordings:
        n = store.entry(rid)["n_samples"]
        expected += max(0, (n - 1000) // 500 + 1)
    assert len(ds) == expected
    s = ds[0]
    assert s["x"].shape == (s["spec"].n_channels, 1000) and s["x"].dtype == torch.float32
    assert "sub-eeglab_task-tutorial_eeg" not in ds.recordings  # no positions: skipped


def test_recording_labels(small_sample):
    _, url = small_sample
    store = ShardStore(url)
    ds = FixedWindows(store, 5.0, labels=EEGMAT_LABELS, recordings=store.select([f"eegmat{i:02d}" for i in range(36)]))
    assert {store.entry(ds.recordings[i])["task"] for i in set(ds.rec_index.tolist())} == {"rest", "arithmetic"}
    counts = np.bincount(ds.labels)
    # 4 subjects x (182 s rest, 62 s arithmetic) in 5-s windows
    assert counts.tolist() == [4 * 36, 4 * 12]


def test_shuffled_windows_cover_the_fixed_windows(small_sample):
    _, url = small_sample
    fixed = FixedWindows(url, 4.0, 2.0)
    shuffled = ShuffledWindows(url, 4.0, 2.0, buffer_size=64, block_s=30.0, seed=3)
    got = [(s["recording"], s["start"]) for s in shuffled]
    want = [(fixed.recordings[i], int(st)) for i, st in zip(fixed.rec_index, fixed.starts)]
    assert sorted(got) == sorted(want) and len(got) == len(shuffled)
    again = [(s["recording"], s["start"]) for s in ShuffledWindows(url, 4.0, 2.0, buffer_size=64, block_s=30.0, seed=3)]
    assert got == again  # same seed, same order
    second_epoch = [(s["recording"], s["start"]) for s in shuffled]
    assert second_epoch != got and sorted(second_epoch) == sorted(got)
    # the data equal the map-style windows
    s = next(iter(ShuffledWindows(url, 4.0, 2.0, seed=1)))
    k = next(k for k in range(len(fixed)) if fixed.recordings[fixed.rec_index[k]] == s["recording"] and fixed.starts[k] == s["start"])
    torch.testing.assert_close(s["x"], fixed[k]["x"])


def test_workers_split_the_epoch(small_sample):
    _, url = small_sample
    ds = ShuffledWindows(url, 4.0, 4.0, buffer_size=32, seed=0, channel_types=["eeg"])
    loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=None)
    seen = [(s["recording"], s["start"]) for s in loader]
    assert len(seen) == len(set(seen)) == len(ds)


def test_event_windows(small_sample):
    _, url = small_sample
    store = ShardStore(url)
    ds = EventWindows(store, {"T1": 0, "T2": 1}, tmin=0.0, tmax=4.0, recordings=store.select(["eegbci001"]))
    ev = store.recording("sub-eegbci001_task-imagLR_run-4_eeg").events
    assert len(ds) == int(np.isin(ev.label, ["T1", "T2"]).sum()) == 15
    assert sorted(set(ds.labels.tolist())) == [0, 1]
    s = ds[0]
    assert s["x"].shape == (64, 800) and s["label"] in (0, 1)
    with pytest.raises(ValueError, match="tmax"):
        EventWindows(store, {"T1": 0}, tmin=1.0, tmax=0.5)


def test_mixed_montage_batch(small_sample):
    _, url = small_sample
    store = ShardStore(url)
    ds = FixedWindows(store, 1.0, recordings=["sub-eegmat00_task-rest_eeg", "sub-megsample_task-audvis_run-1_meg",
                                              "sub-kitmq_task-rest_meg"])
    picks = [0, int(np.flatnonzero(ds.rec_index == 1)[0]), int(np.flatnonzero(ds.rec_index == 2)[0])]
    batch = collate_windows([ds[k] for k in picks])
    assert batch["x"].shape == (3, 366, 200)
    assert batch["channel_mask"].sum(1).tolist() == [19, 366, 125]
    assert (batch["x"][0, 19:] == 0).all() and not batch["sensor_geometry"][batch["channel_mask"]].isnan().any()
    assert set(batch["sensor_type"][1].unique().tolist()) == {0, 1, 2}


def test_splits_are_deterministic_and_disjoint():
    s = eegmat_cbramod()
    assert s.train[0] == "eegmat00" and s.val == ("eegmat28", "eegmat29", "eegmat30", "eegmat31") and len(s.test) == 4
    subjects = [f"s{i}" for i in range(10)]
    loso = list(leave_one_subject_out(subjects, n_val=2, seed=1))
    assert [f.test for f in loso] == [(s,) for s in sorted(subjects)]
    assert loso[3] == list(leave_one_subject_out(subjects, n_val=2, seed=1))[3]
    for fold in loso:
        assert not set(fold.train) & set(fold.val) and len(fold.val) == 2
    folds = kfold_subjects(subjects, 3, seed=0)
    assert sorted(x for f in folds for x in f.test) == sorted(subjects)
    assert folds == kfold_subjects(subjects, 3, seed=0) and folds != kfold_subjects(subjects, 3, seed=1)
    r = random_split(subjects, val=0.2, test=0.2, seed=0)
    assert (len(r.train), len(r.val), len(r.test)) == (6, 2, 2)
    with pytest.raises(ValueError, match="both"):
        type(s)(["a"], ["a"])


def test_datamodules(small_sample):
    _, url = small_sample
    dm = PretrainDataModule(str(url), window_s=2.0, batch_size=8, val_subjects=["eegmat28"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[0] == 8 and batch["x"].shape[2] == 400 and batch["sfreq"] == 200.0
    assert all(r.startswith("sub-eegmat28") for r in dm.val_set.recordings)
    dec = DecodingDataModule(str(url), split="eegmat-cbramod", window_s=5.0, label_map={"rest": 0, "arithmetic": 1})
    dec.setup("fit")
    assert {dec.sets[p].store.entry(r)["subject"] for p in ("train",) for r in dec.sets[p].recordings} >= {"eegmat00"}
    assert dec.class_counts("test").tolist() == [36, 12]
    batch = next(iter(dec.test_dataloader()))
    assert batch["label"].shape == (32,) and batch["x"].shape == (32, 19, 1000)


def test_pretraining_windows_can_be_subject_aligned(small_sample):
    """``PretrainDataModule(normalize='align')`` aligns every part's windows with each subject's
    own statistics, as decoding does, and never pairs them with targets of the raw signal."""
    _, url = small_sample
    kw = dict(window_s=5.0, batch_size=4, val_subjects=["eegmat28"], channel_types=["eeg"])
    raw = PretrainDataModule(str(url), **kw)
    aligned = PretrainDataModule(str(url), normalize="align", target_set="auto", **kw)
    raw.setup("fit"), aligned.setup("fit")
    assert raw.normalizer is None and aligned.target_set is None
    assert aligned.normalizer.describe()["method"] == "align"
    assert set(aligned.normalizer.stats) >= {"eegmat00", "eegmat28"}
    for part in ("train_set", "val_set", "test_set"):
        assert getattr(aligned, part).normalizer is aligned.normalizer
    plain, done = raw.val_set[0], aligned.val_set[0]
    expected = aligned.normalizer(plain["subject"], plain["x"].numpy())
    np.testing.assert_allclose(done["x"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert aligned.statistics_windows().normalizer is aligned.normalizer


def test_pretraining_reads_targets_precomputed_from_aligned_windows(small_sample, tmp_path):
    """``precompute_targets(normalize='align')`` stores the targets of each subject's aligned
    windows; only a data module that aligns the same way picks them, and they equal what it
    would compute on the fly."""
    _, url = small_sample
    store = tmp_path / "store"
    shutil.copytree(url, store)
    spec = TargetSpec(features=("relpow", "hjorth"))
    key = precompute_targets(str(store), 5.0, spec=spec, progress=False, normalize="align")
    entry = ShardStore(store).target_set(key)
    assert entry["normalization"] == {"method": "align", "source": "session", "seconds": None}
    assert key != precompute_targets(str(store), 5.0, spec=spec, progress=False)  # the raw set keeps its own key
    assert verify_store(str(store)).ok
    # megsample's recordings have two montages (no per-subject statistics, so the set leaves them out); the
    # EEGLAB recording has no positioned channel, so no loader reads it and the set need not cover it
    kw = dict(window_s=5.0, batch_size=4, val_subjects=["eegmat28"], exclude_subjects=["megsample"])
    aligned = PretrainDataModule(str(store), normalize="align", target_set="auto", **kw)
    zscored = PretrainDataModule(str(store), normalize="zscore", target_set="auto", **kw)
    aligned.setup("fit"), zscored.setup("fit")
    assert aligned.target_set == key and zscored.target_set is None
    batch = collate_windows([aligned.val_set[k] for k in range(3)])
    expected = compute_targets(batch["x"], aligned.val_set.sfreq, batch["channel_mask"], batch["sensor_geometry"], spec)
    torch.testing.assert_close(batch["targets"], expected.float(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="normalised as"):
        PretrainDataModule(str(store), normalize="zscore", target_set=key, **kw).setup("fit")


def test_resumable_loader_continues_mid_epoch(small_sample):
    from brainfm.data.datamodule import ResumableLoader

    _, url = small_sample

    def loader():
        return ResumableLoader(ShuffledWindows(url, 2.0, seed=5, buffer_size=16), batch_size=4,
                               collate_fn=collate_windows, drop_last=True)

    full = loader()
    first_epoch = [list(zip(b["recording"], b["start"].tolist())) for b in full]
    interrupted = loader()
    it = iter(interrupted)
    seen = [list(zip(b["recording"], b["start"].tolist())) for _, b in zip(range(7), it)]
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches": 7}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [list(zip(b["recording"], b["start"].tolist())) for b in resumed]
    assert seen + rest == first_epoch


def test_chunk_cache_never_confuses_recordings(small_sample):
    """Cache keys belong to one Recording object (not to a reusable id()) and leave with it."""
    import gc

    from brainfm.data.store import CHUNK_CACHE

    _, url = small_sample
    rid = "sub-eegmat00_task-rest_eeg"
    rec = ShardStore(url).recording(rid)
    data = rec.read_all().copy()
    owner = rec._cache_id
    assert any(k[0] == owner for k in CHUNK_CACHE._items)
    assert ShardStore(url).recording(rid)._cache_id != owner
    del rec
    gc.collect()
    assert not any(k[0] == owner for k in CHUNK_CACHE._items)
    other = ShardStore(url).recording("sub-eegmat01_task-rest_eeg").read_all()
    assert not np.array_equal(other, data)
    np.testing.assert_array_equal(ShardStore(url).recording(rid).read_all(), data)
