"""The writers' lock of a shard store: an OS lock on local disk, a heartbeat lease on object stores.

The protocol is specified under "Locking" in :mod:`brainfm.data.store`. Every writer
(``brainfm convert``, ``--targets``, ``--upgrade``, ``import-hdf5``) holds :func:`store_lock` for
its whole run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

import filelock
import fsspec
from fsspec.implementations.local import LocalFileSystem

from brainfm.data.store import StoreLocked, store_fs

LOCK = ".lock"
LOCK_OWNER = ".lock.json"
#: Object-store lease: the holder rewrites its heartbeat this often (s) ...
LEASE_HEARTBEAT_S = 30.0
#: ... and a lease whose heartbeat is older than this (s) belongs to a dead writer.
LEASE_STALE_S = 300.0


@contextlib.contextmanager
def store_lock(store_url: str, timeout: float | None = 0.0, command: str = "convert") -> Iterator[None]:
    """Hold the store's writer lock (see "Locking" in the module docstring).

    ``timeout``: seconds to wait for another writer (0: fail at once; None: wait for ever).
    Raises :class:`StoreLocked` naming the holder when the wait ends.
    """
    fs, root = store_fs(store_url)
    fs.makedirs(root, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}
    owner_path = f"{root}/{LOCK_OWNER}"
    if isinstance(fs, LocalFileSystem):
        lock = filelock.FileLock(f"{root}/{LOCK}", timeout=-1 if timeout is None else timeout,
                                 preserve_lock_file=True)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise StoreLocked(_locked_message(fs, owner_path, store_url, timeout)) from None
        try:
            fs.pipe_file(owner_path, json.dumps(owner).encode())
            yield
        finally:
            with contextlib.suppress(OSError):
                fs.rm(owner_path)
            lock.release()
        return
    with _lease(fs, owner_path, owner, store_url, timeout):
        yield


@contextlib.contextmanager
def _lease(fs: fsspec.AbstractFileSystem, path: str, owner: dict[str, Any], store_url: str,
           timeout: float | None) -> Iterator[None]:
    """The object-store lock: a lease object created only if absent, kept alive by a heartbeat."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fs.pipe_file(path, json.dumps({**owner, "heartbeat": time.time()}).encode(), mode="create")
            break
        except Exception:  # noqa: BLE001 - FileExistsError, or the store's "precondition failed"
            fs.invalidate_cache()
            holder = _read_json(fs, path)
            if holder is None:
                if fs.exists(path):
                    raise
                continue  # released meanwhile
            if time.time() - float(holder.get("heartbeat", 0)) > LEASE_STALE_S:
                fs.rm(path)  # a dead writer's lease
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise StoreLocked(_locked_message(fs, path, store_url, timeout)) from None
            time.sleep(1.0)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(LEASE_HEARTBEAT_S):
            current = _read_json(fs, path)
            if current is None or current.get("token") != owner["token"]:
                return  # taken over: this writer's lease is gone
            fs.pipe_file(path, json.dumps({**owner, "heartbeat": time.time()}).encode())

    thread = threading.Thread(target=beat, daemon=True, name="brainfm-store-lease")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        current = _read_json(fs, path)
        if current is not None and current.get("token") == owner["token"]:
            fs.rm(path)


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        value = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _locked_message(fs: fsspec.AbstractFileSystem, owner_path: str, store_url: str, timeout: float | None) -> str:
    holder = _read_json(fs, owner_path) or {}
    who = (f"brainfm {holder.get('command', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
           f"since {holder.get('started', '?')})") if holder else "another brainfm run"
    waited = f" after waiting {timeout:g} s" if timeout else ""
    return (f"{store_url} is being written by {who}{waited}; wait for it to finish, or pass --wait SECONDS "
            "to wait for the lock")
