"""``benchmarks/gpu_suite.sh``'s benchmarks, run here on the CPU (issue #15 item 6).

Most sessions have no GPU, so the suite's Python must be right before a device is lent:
every code path of ``bench_gpu.py`` runs at ``--quick`` sizes on real EEGMAT windows, its
JSON is strict (a figure the CPU cannot give is ``null``, not ``NaN``), and one section that
fails keeps the others' rows. Timings here mean nothing; the rows' shape does.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402 - benchmarks/ is not a package
import bench_kernels  # noqa: E402
from _rows import json_rows, write_rows  # noqa: E402

ROW_KEYS = {"name", "unit", "brainfm", "anchor", "ratio"}


@pytest.fixture(scope="module", autouse=True)
def _reference_kernels(one_thread_reference_kernels):
    """One thread, CPU reference kernels (tests/conftest.py): in CI, two threads beside another xdist
    worker, with the Triton interpreter that tests/kernels switches on, made the quick run take 388 s."""


def _strict(text: str) -> list[dict]:
    def refuse(token: str):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_bench_gpu_quick_run_on_cpu_writes_strict_rows(tmp_path):
    out = tmp_path / "model.json"
    rows = bench_gpu.main(["--device", "cpu", "--quick", "--json", str(out)])
    written = _strict(out.read_text())
    assert len(written) == len(rows) and all(ROW_KEYS <= set(r) for r in written)
    names = " | ".join(r["name"] for r in written)
    for expected in ("train step, base", "MFU", "latency B=1 19ch x 4s, base W8A8", "W4A16", "CBraMod bf16",
                     "neurodynamics targets, EEGMAT"):
        assert expected in names
    memory = next(r for r in written if "peak memory" in r["name"])
    assert memory["brainfm"] is None  # CUDA's allocator statistics: NaN on a CPU, written as null
    targets = next(r for r in written if "neurodynamics targets" in r["name"])
    assert targets["max_abs_diff"] == 0.0 and targets["ratio"] == pytest.approx(1.0)


def test_a_failing_section_keeps_the_other_rows(tmp_path, monkeypatch):
    """A section that fails costs only its own rows, and each section's rows are on disk before the
    next one starts (a suite step killed by its time limit keeps them)."""
    out = tmp_path / "model.json"
    out.write_text('[{"name": "stale row of an earlier run"}]')
    row = {"name": "train step", "unit": "samples/s", "brainfm": 2.0, "anchor": 1.0, "ratio": 2.0}

    def broken(args):
        assert _strict(out.read_text()) == [row]  # the train section's rows, already written
        raise RuntimeError("PassManager::run failed")  # what a kernel that does not compile raises

    monkeypatch.setattr(bench_gpu, "train_rows", lambda args: [row])
    monkeypatch.setattr(bench_gpu, "inference_rows", broken)
    with pytest.raises(SystemExit, match="section\\(s\\) failed: inference"):
        bench_gpu.main(["--device", "cpu", "--quick", "--only", "train", "inference", "targets", "--json", str(out)])
    rows = _strict(out.read_text())
    assert [r["name"].split(",")[0] for r in rows] == ["train step", "neurodynamics targets"]
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed


def test_rows_are_written_as_strict_json_with_nan_and_inf_as_null(tmp_path):
    rows = [{"name": "x", "unit": "ms", "brainfm": math.nan, "anchor": 1.0, "ratio": math.inf,
             "p10_p90": [1.0, math.nan]}]
    want = [{"name": "x", "unit": "ms", "brainfm": None, "anchor": 1.0, "ratio": None, "p10_p90": [1.0, None]}]
    assert _strict(json_rows(rows)) == want
    write_rows(tmp_path / "rows.json", rows)
    assert _strict((tmp_path / "rows.json").read_text()) == want and len(list(tmp_path.iterdir())) == 1


def test_bench_kernels_keeps_rows_of_the_groups_that_work(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("'constexpr' object has no attribute 'fn'")  # the H200's first error

    monkeypatch.setattr(bench_kernels, "adalog_rows", broken)
    out = tmp_path / "kernels.json"
    out.write_text('[{"name": "stale row of an earlier run"}]')
    with pytest.raises(SystemExit, match="group\\(s\\) failed: adalog"):
        bench_kernels.main(["--quick", "--only", "adalog", "w4a16", "--json", str(out)])
    rows = _strict(out.read_text())
    assert rows and all(ROW_KEYS <= set(r) and r["name"].startswith("cpu-reference") for r in rows)
