"""The shape of the codebase, kept by tests: the layer order of imports, and training without MNE.

Layers (a module may import its own layer and the ones before it)::

    signal < data < models < targets < tasks < deploy < attention < live < cli

``brainfm.pipelines`` (offline conversion, MNE) may import ``signal``, ``data`` and the
``targets`` it precomputes, and only the command-line layer imports it. ``brainfm.kernels``
imports nothing but torch, triton, the standard library and itself; ``models`` (the fused
ASH) and ``deploy`` use it. ``deploy`` reads weights through ``models``, never through
``tasks``. Imports are read with :mod:`ast` from every module, function-level
ones included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Package folders and the dotted names they install as.
PACKAGES = {"brainfm": "brainfm", "pipelines": "brainfm.pipelines", "kernels": "brainfm.kernels"}
ORDER = ("signal", "data", "models", "targets", "tasks", "deploy", "attention", "live", "cli")
#: Modules outside the sub-packages, by layer: the package root holds only the version and the
#: signal contract; ``pretrained`` trains a demo encoder, like the command line does.
TOP_LEVEL = {"brainfm": "signal", "brainfm.signal": "signal", "brainfm.cli": "cli", "brainfm.pretrained": "cli"}
PIPELINES_MAY_IMPORT = {"signal", "data", "targets", "pipelines"}
#: Pairs the order allows but the plan does not: (importer, imported).
FORBIDDEN = {("deploy", "tasks")}
KERNELS_MAY_IMPORT = {"torch", "triton"} | set(sys.stdlib_module_names)
#: Function-level imports of brainfm's own modules: only where they keep `brainfm --help` fast
#: (cli) or avoid importing MNE (the sample store is built by pipelines).
NESTED_OWN_IMPORTS_ALLOWED = {"brainfm.cli", "brainfm.pretrained"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((dotted, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    for prefix in ("brainfm.pipelines", "brainfm.kernels"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix.split(".")[1]
    return module.split(".")[1]


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.append((target, node.lineno, id(node) in nested))
    return out


def test_every_module_has_a_layer():
    assert {_layer(m) for m in MODULES} <= set(ORDER) | {"pipelines", "kernels"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layer_order(module):
    layer = _layer(module)
    bad = []
    for target, line, _ in _imports(module, MODULES[module]):
        top = target.split(".")[0]
        if layer == "kernels":
            if top != "brainfm" and top not in KERNELS_MAY_IMPORT or top == "brainfm" and _layer(target) != "kernels":
                bad.append(f"line {line}: {target} (kernels import only torch, triton, the stdlib and themselves)")
            continue
        if top != "brainfm":
            continue
        other = _layer(target)
        if layer == "pipelines":
            if other not in PIPELINES_MAY_IMPORT:
                bad.append(f"line {line}: {target} (pipelines import signal, data and targets)")
        elif other == "pipelines":
            if layer != "cli":
                bad.append(f"line {line}: {target} (only the command line imports pipelines)")
        elif other == "kernels":
            if ORDER.index(layer) < ORDER.index("models"):
                bad.append(f"line {line}: {target} (kernels serve models and deploy)")
        elif (layer, other) in FORBIDDEN:
            bad.append(f"line {line}: {target} ({layer} may not import {other})")
        elif ORDER.index(other) > ORDER.index(layer):
            bad.append(f"line {line}: {target} ({layer} may not import {other})")
    assert not bad, f"{module} ({layer}):\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_own_modules_are_imported_at_module_top(module):
    if module in NESTED_OWN_IMPORTS_ALLOWED:
        return
    nested = [f"line {line}: {t}" for t, line, inside in _imports(module, MODULES[module])
              if inside and t.split(".")[0] == "brainfm"]
    assert not nested, f"{module} imports brainfm modules inside functions:\n" + "\n".join(nested)


def test_training_never_imports_mne(small_sample, tmp_path):
    """Import data, models and tasks, fit one pretraining and one decoding step on an existing
    store, and check that MNE (and the conversion pipelines behind it) never loaded."""
    _, store = small_sample
    code = f"""
import sys
import lightning.pytorch as pl
import brainfm.data, brainfm.models, brainfm.tasks
from brainfm.data.datamodule import DecodingDataModule, PretrainDataModule
from brainfm.tasks import DecodeModule, PretrainModule

def fit(module, data):
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)
    assert trainer.global_step == 1

fit(PretrainModule("tiny", warmup_steps=1, max_steps=1),
    PretrainDataModule({str(store)!r}, window_s=2.0, batch_size=4, val_subjects=["eegmat28"]))
fit(DecodeModule("tiny"), DecodingDataModule({str(store)!r}, split={{"train": ["eegmat00"]}},
                                              label_map={{"rest": 0, "arithmetic": 1}}, batch_size=4))
loaded = sorted(m for m in ("mne", "mne_bids", "brainfm.pipelines") if m in sys.modules)
assert not loaded, loaded
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
