"""Format 3 (sharded signal): the fast shard reader against Zarr, its integrity errors, batched
and read-ahead reads, and the upgrade of older stores (``brainfm convert --upgrade``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from brainfm.cli import main
from brainfm.data import FixedWindows, ShuffledWindows, collate_windows
from brainfm.data.shard_codec import decode_shard_chunks, shard_layout
from brainfm.data.store import CHUNK_CACHE, FORMAT_VERSION, SIGNAL_BLOSC, ShardStore, StoreError, prefetch, read_manifest
from brainfm.data.store_lock import store_lock
from brainfm.data.store_verify import verify_store
from brainfm.data.store_write import add_target_set, rewrite_recording, upgrade_store, write_target_table
from brainfm.signal import collate_sensors

REST = "sub-eegmat00_task-rest_eeg"


@pytest.fixture
def store(small_sample, tmp_path) -> Path:
    """A private copy of the small sample store (real EEG and MEG recordings, format 3)."""
    dest = tmp_path / "store"
    shutil.copytree(small_sample[1], dest)
    return dest


def _zarr_signal(group: Path, scale: np.ndarray) -> np.ndarray:
    """A recording's signal read by plain Zarr (the reference for the fast path)."""
    data = zarr.open_array(zarr.storage.LocalStore(group / "data"), mode="r")[...]
    return data.astype(np.float32) * scale[:, None]


def test_convert_writes_one_shard_per_recording_and_the_fast_path_matches_zarr(store):
    s = ShardStore(store)
    assert s.manifest["format_version"] == FORMAT_VERSION == 3
    for rid in s.recording_ids:
        rec, entry = s.recording(rid), s.entry(rid)
        assert rec.format_version == 3 and rec._layout is not None, rid
        assert entry["n_shards"] == len(list((store / entry["path"] / "data/c/0").iterdir()))
        np.testing.assert_array_equal(rec.read_all(), _zarr_signal(store / entry["path"], rec.scale), err_msg=rid)
    assert s.entry(REST)["n_shards"] == 1 and s.entry(REST)["n_chunks"] > 1


def test_unsupported_codecs_fall_back_to_zarr(store):
    meta = json.loads((store / "recordings" / REST / "data/zarr.json").read_text())
    meta["codecs"][0]["configuration"]["index_location"] = "start"
    assert shard_layout(zarr.core.metadata.ArrayV3Metadata.from_dict(meta)) is None


def test_missing_inner_chunk_and_truncated_shard_name_the_shard(store):
    shard = store / "recordings" / REST / "data/c/0/0"
    body = shard.read_bytes()
    s = ShardStore(store)
    rec = s.recording(REST)
    m = rec._layout.chunks_per_shard
    index = np.frombuffer(body[len(body) - 16 * m - 4 : -4], dtype="<u8").copy().reshape(m, 2)
    index[1] = 2**64 - 1  # chunk 1 not written
    raw = index.tobytes()
    shard.write_bytes(body[: len(body) - 16 * m - 4] + raw + google_crc32c.value(raw).to_bytes(4, "little"))
    with pytest.raises(StoreError, match=rf"{REST}/data/c/0/0: missing \(inner chunk 1 missing"):
        ShardStore(store).recording(REST).read_all()
    shard.write_bytes(body[:100])
    with pytest.raises(StoreError, match=r"data/c/0/0: cannot be decoded \(.*shorter than its index"):
        ShardStore(store).recording(REST).read_all()


def test_inner_chunk_of_the_wrong_decoded_size_names_the_shard(store):
    shard = store / "recordings" / REST / "data/c/0/0"
    body = bytearray(shard.read_bytes())
    m = ShardStore(store).recording(REST)._layout.chunks_per_shard
    offset = int(np.frombuffer(bytes(body[len(body) - 16 * m - 4 : -4]), dtype="<u8").reshape(m, 2)[0, 0])
    body[offset + 4 : offset + 8] = (123).to_bytes(4, "little")  # the Blosc header's decoded size
    shard.write_bytes(bytes(body))
    with pytest.raises(StoreError, match=r"data/c/0/0: cannot be decoded \(inner chunk 0 decompresses to 123 bytes"):
        ShardStore(store).recording(REST).read_all()


def test_collate_refuses_a_window_with_more_channels_than_its_spec(store):
    sample = next(iter(FixedWindows(str(store), 5.0)))
    wide = dict(sample, x=torch.cat([sample["x"], sample["x"][:1]]))
    with pytest.raises(ValueError, match="more than its spec's"):
        collate_windows([sample, wide])


def test_batched_reads_equal_single_reads(store):
    ds = FixedWindows(str(store), 5.0)
    idx = np.random.default_rng(0).permutation(len(ds))[:80]
    CHUNK_CACHE.__init__()
    batch = ds.__getitems__(idx)
    CHUNK_CACHE.__init__()
    single = [FixedWindows(str(store), 5.0)[int(k)] for k in idx]
    for a, b in zip(batch, single):
        assert a["recording"] == b["recording"] and a["start"] == b["start"]
        np.testing.assert_array_equal(a["x"].numpy(), b["x"].numpy())
    CHUNK_CACHE.__init__()
    spans = [(ds._recording(int(ds.rec_index[k])), int(ds.starts[k]), int(ds.starts[k]) + ds.window) for k in idx]
    assert prefetch(spans) == len({(r.id, r.group_of(a // r.chunk)[0]) for r, a, _ in spans})
    assert prefetch(spans) == 0  # all cached now
    loader = DataLoader(ds, batch_size=16, collate_fn=collate_windows)  # uses __getitems__
    assert sum(len(b["x"]) for b in loader) == len(ds)


def test_read_ahead_yields_the_same_windows(store):
    def windows(read_ahead: int) -> list[tuple[str, int, float]]:
        ds = ShuffledWindows(str(store), 5.0, seed=3, read_ahead=read_ahead)
        return [(w["recording"], w["start"], float(w["x"].sum())) for w in ds]

    inline, ahead = windows(0), windows(4)
    assert inline == ahead and len(inline) == len(FixedWindows(str(store), 5.0))


def test_exact_span_reads_decode_only_their_chunks_and_match(store):
    """``read(..., whole_group=False)`` (block loaders split between workers) decodes the
    chunks of its span only, and returns the same samples as a whole-shard read."""
    rec = ShardStore(store).recording(REST)
    full = rec.read_all()
    assert rec._layout.chunks_per_shard > 2
    CHUNK_CACHE.__init__()
    a, b = rec.chunk + 17, 2 * rec.chunk + 5  # inside chunks 1 and 2
    np.testing.assert_array_equal(rec.read(a, b, whole_group=False), full[:, a:b])
    assert [rec.cached(k) for k in range(4)] == [False, True, True, False]
    np.testing.assert_array_equal(rec.read(0, rec.chunk, whole_group=False), full[:, : rec.chunk])
    n = rec.n_samples
    np.testing.assert_array_equal(rec.read(n - 7, n, whole_group=False), full[:, n - 7 :])  # the last chunk
    for whole in (True, False):  # empty spans, also at the very end
        assert rec.read(n, n, whole_group=whole).shape == (rec.spec.n_channels, 0)
        assert rec.read(5, 5, whole_group=whole).shape == (rec.spec.n_channels, 0)
    CHUNK_CACHE.__init__()
    rec.read(a, b)  # default: the whole shard around it
    assert all(rec.cached(k) for k in range(rec._layout.chunks_per_shard) if k * rec.chunk < rec.n_samples)


def test_decode_shard_range_and_bad_range(store):
    rec = ShardStore(store).recording(REST)
    body = (store / "recordings" / REST / "data/c/0/0").read_bytes()
    lay = rec._layout
    rows = decode_shard_chunks(body, lay, 3)  # (3, C, chunk), as stored
    assert rows.shape == (3, lay.n_channels, lay.chunk)
    np.testing.assert_array_equal(decode_shard_chunks(body, lay, 2, first=1), rows[1:])
    zarr_f16 = zarr.open_array(zarr.storage.LocalStore(store / "recordings" / REST / "data"), mode="r")[:, : 3 * rec.chunk]
    np.testing.assert_array_equal(np.concatenate(list(rows), axis=1), zarr_f16)
    with pytest.raises(ValueError, match="outside a shard"):
        decode_shard_chunks(body, lay, 2, first=lay.chunks_per_shard - 1)


def test_split_block_loaders_yield_every_window_once_across_workers(store):
    """ShuffledWindows with 2 workers (exact-span reads) still yields each window once,
    with the same samples as a single process."""
    one = {(w["recording"], w["start"]): float(w["x"].double().sum()) for w in ShuffledWindows(str(store), 5.0, seed=1)}
    loader = DataLoader(ShuffledWindows(str(store), 5.0, seed=1), batch_size=8, num_workers=2,
                        collate_fn=collate_windows)
    two = {}
    for batch in loader:
        for rid, start, x in zip(batch["recording"], batch["start"].tolist(), batch["x"]):
            assert (rid, start) not in two
            two[(rid, start)] = float(x.double().sum())
    assert two.keys() == one.keys()
    assert all(two[k] == pytest.approx(v, rel=1e-12, abs=1e-9) for k, v in one.items())


def test_new_recordings_are_written_with_the_current_blosc_setting(store):
    meta = json.loads((store / "recordings" / REST / "data/zarr.json").read_text())
    (blosc,) = [c for c in meta["codecs"][0]["configuration"]["codecs"] if c["name"] == "blosc"]
    assert blosc["configuration"]["cname"] == SIGNAL_BLOSC["cname"]


def test_upgrade_rewrites_older_recordings_bit_identical_and_keeps_targets(store, capsys):
    s = ShardStore(store)
    before = {rid: s.recording(rid).read_all() for rid in s.recording_ids}
    with store_lock(str(store)):
        for rid in s.recording_ids[:3]:
            rewrite_recording(str(store), rid, format_version=2)
    old = ShardStore(store)
    assert [old.entry(r)["format_version"] for r in old.recording_ids[:4]] == [2, 2, 2, 3]
    assert "n_shards" not in old.entry(old.recording_ids[0])
    for rid in old.recording_ids:  # format 2 reads as before
        np.testing.assert_array_equal(old.recording(rid).read_all(), before[rid], err_msg=rid)
    rid0 = old.recording_ids[0]
    write_target_table(old, rid0, "k1", np.arange(6, dtype=np.float32).reshape(3, 2))
    assert main(["convert", "--upgrade", str(store)]) == 0
    assert "upgraded 3 recording(s)" in capsys.readouterr().out
    new = ShardStore(store)
    assert {new.entry(r)["format_version"] for r in new.recording_ids} == {3}
    for rid in new.recording_ids:
        np.testing.assert_array_equal(new.recording(rid).read_all(), before[rid], err_msg=rid)
    np.testing.assert_array_equal(new.recording(rid0).read_targets("k1").numpy(), np.arange(6).reshape(3, 2))
    assert verify_store(str(store)).ok
    assert upgrade_store(str(store)) == {}  # nothing left to do


def test_upgrade_leaves_a_damaged_recording_and_says_so(store, capsys):
    with store_lock(str(store)):
        rewrite_recording(str(store), REST, format_version=2)
    (store / "recordings" / REST / "data/c/0/1").unlink()
    assert main(["convert", "--upgrade", str(store)]) == 1
    err = capsys.readouterr().err
    assert f"DAMAGED {REST}: damaged: " in err and "data/c/0/1: missing" in err
    assert read_manifest(str(store))["recordings"][REST]["format_version"] == 2


def test_convert_usage_errors(capsys):
    assert main(["convert", "only-one-path"]) == 2
    assert main(["convert", "--upgrade", "a", "b"]) == 2


def test_target_set_api_unchanged_on_format3(store):
    s = ShardStore(store)
    for rid in s.recording_ids:
        write_target_table(s, rid, "k2", np.ones((2, 1), dtype=np.float32))
    add_target_set(str(store), "k2", spec={}, window_s=5.0, stride_s=5.0, names=["a"])
    assert verify_store(str(store)).ok


def test_collate_sensors_fast_path_equals_the_padded_path(store):
    """A batch of one channel count is stacked; the result equals the general padded path."""
    specs = [ShardStore(store).recording(REST).spec] * 3
    fast = collate_sensors(specs)
    padded = collate_sensors(specs, n_channels=specs[0].n_channels + 2)  # forces the padding loop
    c = specs[0].n_channels
    for key in ("sensor_geometry", "sensor_type", "channel_mask"):
        assert fast[key].dtype == padded[key].dtype
        assert torch.equal(fast[key], padded[key][:, :c])
    assert not padded["channel_mask"][:, c:].any()
