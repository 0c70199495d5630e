"""Integrity checks of a shard store: ``brainfm verify``, and the checks writers (``convert``,
``import-hdf5``, ``convert --upgrade``) run before they skip or rewrite a recording.

What is checked is specified under "Integrity" in :mod:`brainfm.data.store`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping

import zarr

from brainfm.data.store import (MANIFEST, TARGETS_PREFIX, Recording, StoreError, read_manifest, store_fs,
                                zarr_store)


@dataclasses.dataclass
class Verification:
    """What :func:`verify_store` found: per recording id (or ``targets-<key>``), its problems."""

    store: str
    checked: int = 0
    problems: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_recording(store_url: str, recording_id: str, entry: Mapping[str, Any], quick: bool = False
                     ) -> tuple[list[str], list[str]]:
    """(problems, notes) of one listed recording; see "Integrity" in the module docstring."""
    fs, root = store_fs(store_url)
    group = f"{root}/{entry['path']}"
    try:
        meta = fs.cat_file(f"{group}/zarr.json")
    except FileNotFoundError:
        return [f"{group}: group missing"], []
    try:
        attrs = json.loads(meta)["attributes"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{group}/zarr.json is corrupt ({err})"], []
    try:
        present = {k: v["size"] for k, v in fs.find(f"{group}/data", detail=True).items()}
        if isinstance((attrs.get("channels") or {}).get("loc"), dict):
            present.update({k: v["size"] for k, v in fs.find(f"{group}/channel_loc", detail=True).items()})
    except FileNotFoundError:
        present = {}
    problems: list[str] = []
    if entry.get("format_version", 1) >= 2:
        if hashlib.sha256(meta).hexdigest() != entry.get("group_sha256"):
            problems.append(f"{group}/zarr.json differs from what was written (SHA-256)")
        for rel, (size, digest) in (attrs.get("files") or {}).items():
            path = f"{group}/{rel}"
            if path not in present:
                problems.append(f"{path}: missing")
            elif present[path] != size:
                problems.append(f"{path}: {present[path]} bytes, {size} written")
            elif not quick and hashlib.sha256(fs.cat_file(path)).hexdigest() != digest:
                problems.append(f"{path}: corrupt (SHA-256 differs from what was written)")
        if not attrs.get("files"):
            problems.append(f"{group}/zarr.json lists no files")
        return problems, []
    # format 1: no hashes; every chunk must exist (and decode)
    notes = ["format 1: no recorded hashes; checked that every chunk exists" + ("" if quick else " and decodes")]
    try:
        rec = Recording(zarr.open_group(zarr_store(fs, group), mode="r"), recording_id, group, fs)
    except (StoreError, ValueError, KeyError) as err:
        return [str(err)], notes
    n_chunks = -(-rec.n_samples // rec.chunk)
    for k in range(n_chunks):
        try:
            if quick:
                rec._check_chunk_files(k, k + 1)
            else:
                rec._decode(k, k + 1)
        except StoreError as err:
            problems.append(str(err).split("; the store is damaged")[0])
    return problems, notes


def verify_store(store_url: str, quick: bool = False, progress: Callable[[str], None] | None = None) -> Verification:
    """Check every recording the manifest lists, and every listed target set (see "Integrity")."""
    fs, root = store_fs(store_url)
    manifest = read_manifest(store_url)
    if manifest is None:
        raise FileNotFoundError(f"{store_url} is not a brainfm store (no {MANIFEST})")
    out = Verification(str(store_url))
    for rid, entry in sorted(manifest["recordings"].items()):
        problems, notes = verify_recording(store_url, rid, entry, quick=quick)
        out.checked += 1
        if problems:
            out.problems[rid] = problems
        if notes:
            out.notes[rid] = notes
        if progress is not None:
            progress(rid)
    for key, target_entry in manifest.get("targets", {}).items():
        covered = target_entry.get("recordings")
        missing = [rid for rid, e in sorted(manifest["recordings"].items())
                   if (covered is None or rid in covered) and not fs.exists(f"{root}/{e['path']}/{TARGETS_PREFIX}{key}/zarr.json")]
        if missing:
            out.problems[f"{TARGETS_PREFIX}{key}"] = [f"no array in {len(missing)} recording(s): {', '.join(missing[:5])}"]
    return out
