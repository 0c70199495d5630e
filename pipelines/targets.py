"""Precompute neurodynamics targets into a store (``brainfm convert --targets WINDOW_S``).

For every recording, the target vector (:func:`brainfm.targets.compute_targets`) of
each fixed window ``[k·stride, k·stride + window)`` is written as a float32 Zarr array
``targets-<key>`` of shape ``(n_windows, K)`` inside the recording's group. Each array
is written under a temporary name and renamed; the manifest lists the target set
(``manifest["targets"][key]``: spec, window, stride, names, channel picking) only after
every recording has it, so readers never see a partial set.

Windows use the loader's channel picking (positioned channels of every type), so a
:class:`~brainfm.data.FixedWindows` or :class:`~brainfm.data.ShuffledWindows` with the
same window, a stride that is a multiple of the stored one and ``targets=key`` gets
exactly the targets it would compute itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from typing import Any

import numpy as np
import torch
import zarr

from brainfm.data import store as shard
from brainfm.data.dataset import FixedWindows, collate_windows


def targets_key(spec_dict: dict[str, Any], window_s: float, stride_s: float) -> str:
    payload = json.dumps({"spec": spec_dict, "window_s": window_s, "stride_s": stride_s}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def precompute_targets(store_url: str, window_s: float, stride_s: float | None = None,
                       spec: Any = None, batch_size: int = 64, progress: bool = True) -> str:
    """Write the targets of every fixed window of every recording; return the target-set key."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from brainfm.targets import TargetSpec, compute_targets, target_names  # noqa: PLC0415

    spec = spec or TargetSpec()
    stride_s = stride_s or window_s
    spec_dict = json.loads(json.dumps(dataclasses.asdict(spec)))
    key = targets_key(spec_dict, window_s, stride_s)
    store = shard.ShardStore(store_url)
    fs, root = shard.store_fs(store_url)
    windows = FixedWindows(store, window_s, stride_s)
    names = target_names(spec)
    for i, rid in enumerate(tqdm(windows.recordings, desc="targets", unit="rec", disable=not progress)):
        idx = np.flatnonzero(windows.rec_index == i)
        values = np.zeros((len(idx), len(names)), dtype=np.float32)
        for lo in range(0, len(idx), batch_size):
            batch = collate_windows([windows[int(k)] for k in idx[lo : lo + batch_size]])
            y = compute_targets(batch["x"], windows.sfreq, batch["channel_mask"], batch["sensor_geometry"], spec)
            values[lo : lo + len(y)] = y.float().numpy()
        group_path = f"{root}/{store.entry(rid)['path']}"
        tmp = f"{group_path}/.tmp-targets-{key}-{uuid.uuid4().hex[:8]}"
        arr = zarr.create_array(shard.zarr_store(fs, tmp), shape=values.shape, dtype="float32",
                                chunks=(max(1, len(values)), len(names)), zarr_format=3)
        arr[...] = values
        final = f"{group_path}/targets-{key}"
        fs.invalidate_cache()
        if fs.exists(final):
            fs.rm(final, recursive=True)
        shard.move_tree(fs, tmp, final)
    manifest = shard.read_manifest(store_url)
    manifest.setdefault("targets", {})[key] = {
        "spec": spec_dict, "window_s": window_s, "stride_s": stride_s, "names": names,
        "positioned_only": True, "channel_types": None,
    }
    shard.commit(store_url, manifest)
    return key


def read_targets(recording: shard.Recording, key: str) -> torch.Tensor:
    """The ``(n_windows, K)`` precomputed targets of one recording."""
    return torch.from_numpy(recording.read_array(f"targets-{key}"))
