"""Backend dispatch, both kernel builds, and a torch.compile smoke test of a custom op."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction

from brainfm.kernels import quantize_per_token, w4a16_linear, w8a8_linear
from brainfm.kernels import quant, reference
from brainfm.kernels._launch import backend_for


def test_backend_for(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(2)
    assert backend_for(x) == "interpret"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert backend_for(x) == "reference"


def test_both_builds_exist_whatever_the_import_order() -> None:
    """The interpreter build does not depend on TRITON_INTERPRET at import time."""
    kernel = quant._quantize_rowwise_kernel
    assert isinstance(kernel.interpreted, InterpretedFunction)
    assert not isinstance(kernel.compiled, InterpretedFunction)


_IMPORT_ORDER_SCRIPT = textwrap.dedent("""
    import os
    import triton, torch  # imported before TRITON_INTERPRET: triton's stdlib is built for the GPU
    import brainfm.kernels as K
    from brainfm.kernels import reference as ref
    os.environ["TRITON_INTERPRET"] = "1"
    x = torch.randn(13, 200)
    q, s = K.quantize_per_token(x)
    assert torch.equal(q, ref.quantize_per_token_ref(x)[0])
    a, z = torch.tensor(1.2), torch.tensor(0.3)
    torch.testing.assert_close(K.fused_ash(x, a, z), ref.ash_ref(x, a, z))
    print("interpreted")
""")


def test_interpreter_works_when_triton_was_imported_first() -> None:
    """TRITON_INTERPRET set after `import triton` (e.g. Lightning imported it) still interprets."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-W", "error", "-c", _IMPORT_ORDER_SCRIPT], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "interpreted" in out.stdout


def test_cpu_reference_path_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(9, 64)
    q, s = quantize_per_token(x)
    q_ref, s_ref = reference.quantize_per_token_ref(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    qw, sw = reference.quantize_per_token_ref(torch.randn(16, 64))
    y = w8a8_linear(q, s, qw, sw, None, "gelu", torch.float32)
    assert torch.equal(y, reference.w8a8_linear_ref(q, s, qw, sw, None, "gelu"))
    packed = reference.pack_int4(torch.randint(-8, 8, (16, 64), dtype=torch.int8))
    scales = torch.rand(16, 1, dtype=torch.float16)
    assert w4a16_linear(x, packed, scales, 64).shape == (9, 16)


def test_fake_impls_shapes() -> None:
    with torch._subclasses.fake_tensor.FakeTensorMode():
        x = torch.empty(3, 5, 200)
        q, s = torch.ops.brainfm.quantize_per_token(x)
        assert q.shape == x.shape and q.dtype == torch.int8 and s.shape == (3, 5)
        y = torch.ops.brainfm.w8a8_linear(q, s, torch.empty(97, 200, dtype=torch.int8), torch.empty(97),
                                          None, "silu", torch.bfloat16)
        assert y.shape == (3, 5, 97) and y.dtype == torch.bfloat16


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="inductor's CPU backend needs a C compiler")
# Inductor itself calls a deprecated torch.jit API on import; not our code.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_custom_op() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        q, s = quantize_per_token(x)
        return q.float() * s[:, None] + 1.0

    x = torch.randn(13, 200)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True)(x), f(x))
