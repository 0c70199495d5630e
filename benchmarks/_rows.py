"""Benchmark rows as JSON (``--json PATH``): ``[{"name", "unit", "brainfm", "anchor", "ratio", ...}]``.

Strict JSON, so any parser reads it: a figure that could not be measured (NaN or an infinity, e.g.
CUDA memory statistics on a CPU) is written as ``null``. Written to a temporary file beside ``path``
and renamed, so a benchmark killed by a time limit mid-write leaves the last complete file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def json_rows(rows: list[dict[str, Any]]) -> str:
    """``rows`` as strict JSON text (non-finite floats, also inside lists, become ``null``)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps([{k: clean(v) for k, v in r.items()} for r in rows], indent=2, allow_nan=False)


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` (see the module docstring)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json_rows(rows))
    os.replace(tmp, path)
