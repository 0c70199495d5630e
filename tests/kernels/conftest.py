"""Kernel tests: CPU tensors run the Triton interpreter, CUDA tensors the compiled kernels.

``TRITON_INTERPRET`` is set here, before anything in this directory imports triton. The
kernels do not depend on that order: they build their interpreter variant explicitly,
read the variable at call time and avoid triton's mode-specific ``@jit`` helpers (see
``brainfm.kernels._launch``), so a session in which another test directory imported
triton first (Lightning and ``torch._dynamo`` do) still interprets CPU tensors here, and
CUDA tests in the same session still compile.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

_NO_CUDA = "needs a CUDA device; run `pytest -m gpu tests/kernels` on a GPU machine"

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                     reason=_NO_CUDA)]),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Run a test on CPU (interpreter) and, with the ``gpu`` marker, on CUDA."""
    return request.param


@pytest.fixture(autouse=True)
def _interpret_and_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Re-assert per test: another test directory may have changed the variable.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
