"""Empty the OS page cache for given files, and measure how much of them it holds.

Cold-read benchmarks must start every side with its files out of the page cache, or they
measure memory copies, not reads. Without root the only way is per file:
``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` drops the file's clean cached pages (pages
another process has mapped stay). Dirty pages are not dropped: a store just written kept 88 %
of its bytes cached after ``DONTNEED`` alone, none after ``fsync`` first, so every file is
synced before the advice. :func:`resident_bytes` checks that it took effect with
``mincore(2)`` on a private mapping of each file, as util-linux ``fincore`` does.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import Iterable

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
_PAGE = mmap.PAGESIZE


def files_under(*roots: Path | str, pattern: str = "*") -> list[Path]:
    """Every regular file under ``roots`` whose name matches ``pattern``."""
    out: list[Path] = []
    for root in roots:
        out += [p for p in Path(root).rglob(pattern) if p.is_file()]
    return sorted(out)


def drop_page_cache(files: Iterable[Path | str]) -> int:
    """``fsync`` then ``POSIX_FADV_DONTNEED`` on every file; returns the number of files."""
    n = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages would stay cached
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        n += 1
    return n


def resident_bytes(files: Iterable[Path | str]) -> tuple[int, int]:
    """(bytes in the page cache, total bytes) over ``files``, by ``mincore(2)``."""
    resident = total = 0
    for path in files:
        size = os.path.getsize(path)
        total += size
        if size == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            pages = -(-size // _PAGE)
            vec = (ctypes.c_ubyte * pages)()
            addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            if _LIBC.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
            resident += sum(v & 1 for v in vec) * _PAGE
    return min(resident, total), total
