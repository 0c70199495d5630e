"""Launch plumbing shared by every op: backend choice and kernels built for both backends.

Each ``@triton.jit`` body in this package is wrapped by :class:`DualKernel`, which keeps
two builds of the same Python function:

* ``compiled``: a :class:`triton.runtime.jit.JITFunction` (optionally under
  ``triton.autotune``) for CUDA tensors;
* ``interpreted``: a :class:`triton.runtime.interpreter.InterpretedFunction` for CPU
  tensors when ``TRITON_INTERPRET=1``.

Building both explicitly, instead of letting ``@triton.jit`` look at ``TRITON_INTERPRET``
when the module is imported, and keeping triton's own mode-specific ``@jit`` helpers out
of the kernels (see :func:`combine_fns`), means the import order does not matter: a
session that imported triton or :mod:`brainfm.kernels` before setting the variable still
runs the interpreter on CPU tensors, and CUDA tensors in the same session still compile.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Literal, Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

Backend = Literal["triton", "interpret", "reference"]
Grid = Callable[[dict[str, Any]], tuple[int, ...]]


def interpret_enabled() -> bool:
    """Return True when ``TRITON_INTERPRET=1`` is set (read at call time, not import time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_for(t: torch.Tensor) -> Backend:
    """Choose the backend for a tensor.

    CUDA tensors run the compiled Triton kernel. CPU tensors run the Triton interpreter
    when ``TRITON_INTERPRET=1`` and the pure-PyTorch reference otherwise, so deployment on
    a CPU works without a GPU toolchain.
    """
    if t.is_cuda:
        return "triton"
    if interpret_enabled():
        return "interpret"
    return "reference"


def store_dtype(out_dtype: torch.dtype, backend: Backend) -> torch.dtype:
    """Dtype a kernel should write for a requested output dtype.

    The Triton 3.6 interpreter converts fp32 to bf16 by truncation instead of
    round-to-nearest-even, so under the interpreter kernels write fp32 and the launcher
    casts with torch. Compiled kernels write ``out_dtype`` directly.
    """
    return torch.float32 if backend == "interpret" else out_dtype


class DualKernel:
    """One ``@triton.jit`` body built for the GPU (autotuned) and for the interpreter.

    Parameters
    ----------
    fn : callable
        The undecorated kernel body.
    configs : sequence of triton.Config, optional
        Autotuning candidates for the GPU build; ``None`` means a plain JIT kernel whose
        meta-parameters the launcher passes.
    key : sequence of str, optional
        Argument names that trigger re-tuning when they change.
    prune : callable, optional
        ``early_config_prune(configs, named_args, **kwargs)`` hook (architecture filter).
    reset_to_zero : sequence of str, optional
        Output arguments the autotuner zeroes before each trial (split-K atomics).
    """

    def __init__(
        self,
        fn: Callable[..., None],
        configs: Sequence[triton.Config] | None = None,
        key: Sequence[str] = (),
        prune: Callable[..., list] | None = None,
        reset_to_zero: Sequence[str] | None = None,
    ) -> None:
        self.fn = fn
        self.interpreted = InterpretedFunction(fn)
        jit = JITFunction(fn)
        if configs:
            self.compiled = triton.autotune(
                configs=list(configs),
                key=list(key),
                prune_configs_by={"early_config_prune": prune} if prune else None,
                reset_to_zero=list(reset_to_zero) if reset_to_zero else None,
            )(jit)
        else:
            self.compiled = jit

    def launch(self, backend: Backend, grid: Grid, *args: Any, interpret_meta: dict[str, Any],
               gpu_meta: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Launch on ``backend`` ("triton" or "interpret").

        ``interpret_meta`` holds the block sizes used under the interpreter, where one large
        block per program keeps the number of (slow, Python-level) programs small.
        ``gpu_meta`` holds the meta-parameters of a kernel that is not autotuned.
        """
        if backend == "interpret":
            with warnings.catch_warnings():
                # The Triton 3.6 interpreter turns scalar kernel arguments into 1-element arrays
                # and calls int() on them (e.g. in `range(0, K, BLOCK_K)`), which numpy >= 1.25
                # deprecates. Harmless for the interpreter; silenced for this launch only.
                warnings.filterwarnings("ignore", message="Conversion of an array with ndim > 0 to a scalar",
                                        category=DeprecationWarning)
                self.interpreted[grid(interpret_meta)](*args, **kwargs, **interpret_meta)
        elif backend == "triton":
            self.compiled[grid](*args, **kwargs, **(gpu_meta or {}))
        else:
            raise ValueError(f"DualKernel cannot launch on backend {backend!r}")


def dual_jit(configs: Sequence[triton.Config] | None = None, key: Sequence[str] = (),
             prune: Callable[..., list] | None = None,
             reset_to_zero: Sequence[str] | None = None) -> Callable[[Callable[..., None]], DualKernel]:
    """Decorator form of :class:`DualKernel` (use it in place of ``@triton.jit``)."""

    def wrap(fn: Callable[..., None]) -> DualKernel:
        return DualKernel(fn, configs, key, prune, reset_to_zero)

    return wrap


def as_2d(x: torch.Tensor) -> torch.Tensor:
    """View ``(..., K)`` as a row-major ``(M, K)`` matrix with unit stride along K."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


# Combine functions for `tl.reduce`. Kernels here call only Triton builtins, never the
# `@triton.jit` helpers of triton.language.standard (tl.max, tl.sum, tl.sigmoid, tl.cdiv,
# tl.zeros) by name: those are built once, when triton is imported, for whichever mode
# TRITON_INTERPRET selected then, and a helper built for the other mode fails ("Cannot call
# @triton.jit'd outside of the scope of a kernel" in the interpreter, "Unsupported function
# referenced" in the compiler). Each reduction therefore branches on the `INTERPRET`
# constexpr, so that each backend only ever sees its own branch:
#
#     if INTERPRET:
#         s = tl.reduce(x, 1, SUM_FN)       # the standard library's function, by identity
#     else:
#         s = tl.reduce(x, 1, SUM_COMBINE)  # this module's explicit JITFunction, a global
#
# The interpreter recognizes the standard library's combine functions by identity and maps
# them to numpy reductions (any other function falls back to a per-element Python loop), so
# they come in as `SUM_FN` / `MAX_FN` arguments (`combine_fns`). The compiler needs a
# JITFunction it can resolve as a *global*: handed in as an argument, it arrives wrapped in a
# `tl.constexpr` that `tl.reduce` does not unwrap ("'constexpr' object has no attribute
# 'fn'", first seen on an H200; `tests/kernels/test_compile.py` now compiles every kernel for
# sm_90 on any machine).
def _max_combine(a, b):
    return tl.maximum(a, b)


def _add_combine(a, b):
    return a + b


MAX_COMBINE = JITFunction(_max_combine)
SUM_COMBINE = JITFunction(_add_combine)


def combine_fns(backend: Backend) -> dict[str, Any]:
    """``MAX_FN`` / ``SUM_FN`` constexpr arguments: the interpreter's combine functions.

    The compiled branch of each kernel ignores them (see the note above), so any placeholder
    does for ``backend='triton'``; ``None`` keeps one compiled variant.
    """
    if backend == "interpret":
        return {"MAX_FN": tl.standard._elementwise_max, "SUM_FN": tl.standard._sum_combine}
    return {"MAX_FN": None, "SUM_FN": None}
