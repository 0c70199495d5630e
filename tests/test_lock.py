"""The environment the tests run in is the one ``uv.lock`` describes (issue #10).

pip or uv keep whatever already satisfies a range, so a stale or hand-patched environment
can pass while a fresh install fails (torchaudio 2.11.1 does not load with torch 2.11.0).
This test fails whenever the coupled stack installed here differs from the lock.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"
#: ABI- or numerics-coupled packages: torch, torchaudio and triton link against each other, the
#: Triton 3.6 interpreter needs numpy < 2.3, and onnxruntime's int8 kernels set the ONNX bounds.
COUPLED = ("torch", "torchaudio", "triton", "numpy", "onnxruntime")


def locked_versions() -> dict[str, set[str]]:
    """Package name -> the versions ``uv.lock`` pins (several when markers split by Python)."""
    lock = tomllib.loads(LOCK.read_text())
    versions: dict[str, set[str]] = defaultdict(set)
    for package in lock["package"]:
        if "version" in package:
            versions[package["name"]].add(package["version"])
    return versions


@pytest.mark.parametrize("name", COUPLED)
def test_installed_version_equals_the_lock(name):
    locked = locked_versions()[name]
    assert locked, f"{name} is not in {LOCK.name}"
    installed = importlib.metadata.version(name)
    assert installed in locked, (
        f"{name} {installed} is installed but {LOCK.name} pins {sorted(locked)}: "
        "rebuild the environment from the lock (`python -m uv sync --locked`)")


def test_torch_and_torchaudio_load_together():
    """The failure the lock prevents: torchaudio's C++ library must load against this torch."""
    import torch
    import torchaudio.functional as AF

    x = torch.randn(1, 400, dtype=torch.float64)
    y = AF.lfilter(x, torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert y.shape == x.shape and torch.isfinite(y).all()
