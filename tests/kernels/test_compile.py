"""Every Triton kernel compiles for Hopper (sm_90) and Ampere (sm_80), on any machine.

The CPU tests run the Triton interpreter, which accepts code the compiler rejects. The
first run of ``benchmarks/gpu_suite.sh`` on an H200 showed it: ``tl.reduce`` was handed a
combine function as a kernel argument, which the compiler wraps in a ``tl.constexpr`` that
``tl.reduce`` does not unwrap, so every op that quantizes activations or runs fused ASH
failed to compile there (58 of 113 CUDA tests) while all 141 interpreter tests passed.

Triton compiles ahead of time without a device: ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))`` runs the front end, the MLIR passes and the bundled
``ptxas``. So each op is launched here once under the interpreter with real arguments, the
launches are recorded, and each is replayed through the compiler with the compiled
branch's arguments (``INTERPRET=False``, the GPU meta-parameters: the first Hopper
autotune config for sm_90, the first Ampere one for sm_80). This proves the kernels
compile, not that they are correct or fast on a GPU: ``pytest -m gpu tests/kernels`` and
``benchmarks/gpu_suite.sh`` do that.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import mangle_type

from brainfm import kernels as K
from brainfm.kernels import adalog, ash, configs, quant, w4a16, w6a8, w8a8
from brainfm.kernels._launch import DualKernel, combine_fns

AMPERE_CONFIGS = [c for name in dir(configs) if name.endswith("_AMPERE") for c in getattr(configs, name)]
MODULES = (adalog, ash, quant, w4a16, w6a8, w8a8)
OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _exercise_every_op() -> None:
    """One call of each op on CPU (interpreter), covering each kernel and code path."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 200, generator=g)
    q, s = K.quantize_per_token(x)
    K.quantize_per_token(torch.randn(3, 20000, generator=g))  # two-pass rows (K > one block)
    K.dequantize_per_token(q, s, torch.bfloat16)
    w = torch.randn(96, 200, generator=g) / 14
    qw, sw = K.quantize_weight_per_channel(w)
    K.w8a8_linear(q, s, qw, sw, torch.zeros(96), "gelu", torch.bfloat16)
    packed4, s4 = K.quantize_weight_int4(w, 64)
    for m in (1, 64):  # split-K GEMV and tiled GEMM
        K.w4a16_linear(torch.randn(m, 200, generator=g).to(torch.bfloat16), packed4, s4, 64, None)
    packed6, s6 = K.quantize_weight_int6(w)
    for m in (1, 64):
        qm, sm = K.quantize_per_token(torch.randn(m, 200, generator=g))
        K.w6a8_linear(qm, sm, packed6, s6, None, "none", torch.float32)
    thresholds = torch.linspace(-1, 1, 15)
    codes = K.adalog_quantize(x, thresholds)
    K.adalog_dequantize(codes, torch.linspace(-1, 1, 16))
    a = torch.tensor(1.2, requires_grad=True)
    z = torch.tensor(0.3, requires_grad=True)
    K.fused_ash(x.clone().requires_grad_(True), a, z).sum().backward()


def _record_launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[DualKernel, tuple, dict, dict | None]]:
    calls = []
    original = DualKernel.launch

    def recording(self, backend, grid, *args, interpret_meta, gpu_meta=None, **kwargs):
        calls.append((self, args, kwargs, gpu_meta))
        return original(self, backend, grid, *args, interpret_meta=interpret_meta, gpu_meta=gpu_meta, **kwargs)

    monkeypatch.setattr(DualKernel, "launch", recording)
    _exercise_every_op()
    return calls


def _compile(kernel: DualKernel, args: tuple, kwargs: dict, gpu_meta: dict | None, arch: int) -> None:
    """Compile one recorded launch for ``sm_{arch}`` the way the GPU would run it."""
    compiled = kernel.compiled
    if isinstance(compiled, Autotuner):
        pool = compiled.configs if arch >= 90 else [c for c in compiled.configs if any(c is a for a in AMPERE_CONFIGS)]
        config = pool[0]
        meta = {**config.kwargs, **{k: getattr(config, k) for k in ("num_warps", "num_stages")}}
        jit = compiled.fn
    else:
        meta, jit = dict(gpu_meta or {}), compiled
    compiled_branch = {**combine_fns("triton"), "INTERPRET": False}
    kwargs = {k: compiled_branch.get(k, v) for k, v in kwargs.items()}
    options = {k: meta.pop(k) for k in OPTIONS if k in meta}
    bound = inspect.signature(jit.fn).bind_partial(*args, **kwargs, **meta)
    signature, constexprs = {}, {}
    for param in jit.params:
        value = bound.arguments.get(param.name, param.default)
        if param.is_constexpr or value is None:
            signature[param.name], constexprs[param.name] = "constexpr", value
        else:
            signature[param.name] = mangle_type(value)
    triton.compile(ASTSource(jit, signature, constexprs), target=GPUTarget("cuda", arch, 32), options=options)


def test_every_kernel_compiles_for_hopper_and_ampere(monkeypatch: pytest.MonkeyPatch) -> None:
    launches = _record_launches(monkeypatch)
    every = {id(v): f"{m.__name__}.{name}" for m in MODULES for name, v in vars(m).items() if isinstance(v, DualKernel)}
    missed = set(every) - {id(k) for k, *_ in launches}
    assert not missed, f"not exercised: {sorted(every[i] for i in missed)}"
    seen = set()
    for kernel, args, kwargs, gpu_meta in launches:
        key = (id(kernel), tuple(mangle_type(a) if isinstance(a, torch.Tensor) else type(a) for a in args))
        if key in seen:
            continue
        seen.add(key)
        for arch in (90, 80):
            try:
                _compile(kernel, args, kwargs, gpu_meta, arch)
            except Exception as err:  # name the kernel and the target in the failure
                raise AssertionError(f"{kernel.fn.__name__} does not compile for sm_{arch}: {err}") from err
