"""Where brainfm finds real recordings and where it caches what it builds.

The *data root* holds raw public recordings (EEGMAT, EEGMMIDB, MEG excerpts, ...)
laid out as described in ``../shared/data/README.md``. Resolution order:

1. ``$BRAINFM_DATA`` if set;
2. ``../shared/data`` next to the repository checkout (the developers' and CI's copy);
3. a user cache (``$BRAINFM_HOME/data``, default ``~/.cache/brainfm/data``), which
   the fetchers in :mod:`brainfm.pipelines.fetch` fill from the original sources.

Built artefacts (the sample BIDS dataset and its shard store) go to the *cache
home*, ``$BRAINFM_HOME`` or ``~/.cache/brainfm``, never into the data root, which may
be read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def cache_home() -> Path:
    """Directory for things brainfm builds: ``$BRAINFM_HOME`` or ``~/.cache/brainfm``."""
    env = os.environ.get("BRAINFM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "brainfm"


def data_root() -> Path:
    """Directory of raw recordings, resolved as the module docstring says."""
    env = os.environ.get("BRAINFM_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"BRAINFM_DATA={env!r} is not a directory")
        return path
    shared = _REPO.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return cache_home() / "data"


def default_sample_dir() -> Path:
    """Where ``brainfm sample-data`` builds its BIDS dataset and store by default."""
    return cache_home() / "sample"
