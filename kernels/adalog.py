"""AdaLog quantize / dequantize: per-tensor table quantizers as Triton ops.

AdaLog (Wu et al., ECCV 2024 [1]_) quantizes post-softmax and post-GELU activations, whose
distributions are power-law-like, on a logarithmic grid with an *adaptive* base
``a = 2**(q / r)`` (``r = 37``, integer ``q`` searched per tensor) instead of base 2 or
``sqrt(2)``. A code ``i`` stands for ``s * a**-i`` (minus the reparameterised bias ``beta``
for post-GELU tensors), so dequantization is a shift by ``floor(i q / r)`` and one entry of
an ``r``-entry fraction table, which is what keeps it hardware-friendly.

Here a quantizer is carried as two small vectors, defined in
:func:`brainfm.kernels.reference.adalog_tables` (and
:func:`~brainfm.kernels.reference.uniform_tables` for the uniform baseline, so both run
through the same kernels):

* quantize: ``code = #{k : x < t_k}`` for the descending thresholds ``t`` (``2**bits - 1``
  of them): a ``bits``-step binary search of that prefix (valid for any non-increasing ``t``;
  one gather and one comparison per step), which is exactly "round ``-log_a`` to the nearest
  integer" without a single transcendental;
* dequantize: ``levels[code]``, one gather.

Both are comparisons and gathers, so the kernels match the PyTorch references bit for bit
on every backend (the Triton interpreter, compiled Triton and the reference itself).

References
----------
.. [1] Z. Wu, J. Chen, H. Zhong, D. Huang, Y. Wang, "AdaLog: Post-Training Quantization
   for Vision Transformers with Adaptive Logarithm Quantizer", ECCV 2024, arXiv:2407.12951.
"""

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._launch import backend_for, dual_jit, store_dtype

__all__ = ["adalog_dequantize", "adalog_quantize"]

_GPU_BLOCK = 1024
_INTERPRET_BLOCK = 1 << 16


@dual_jit()
def _table_quantize_kernel(x_ptr, t_ptr, c_ptr, numel, BITS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    code = tl.full((BLOCK,), 0, tl.int32)
    for i in tl.static_range(BITS):  # binary search of the prefix {k : x < t_k}
        step = 1 << (BITS - 1 - i)
        t = tl.load(t_ptr + code + (step - 1))  # (BLOCK,) gather from the 2**BITS - 1 thresholds
        code = tl.where(x < t, code + step, code)
    tl.store(c_ptr + offs, code.to(tl.uint8), mask=mask)


@dual_jit()
def _table_dequantize_kernel(c_ptr, v_ptr, y_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    code = tl.load(c_ptr + offs, mask=mask, other=0).to(tl.int32)
    y = tl.load(v_ptr + code, mask=mask, other=0.0)  # (BLOCK,) gather from the 2**BITS levels
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _bits(n_thresholds: int) -> int:
    bits = (n_thresholds + 1).bit_length() - 1
    if n_thresholds < 1 or 2**bits - 1 != n_thresholds or bits > 8:
        raise ValueError(f"expected 2**bits - 1 thresholds (bits <= 8), got {n_thresholds}")
    return bits


@torch.library.custom_op("brainfm::adalog_quantize", mutates_args=())
def adalog_quantize(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Codes of ``x`` under a table quantizer (AdaLog or uniform).

    Parameters
    ----------
    x : torch.Tensor
        float32, float16 or bfloat16, any shape.
    thresholds : torch.Tensor
        float32 ``(2**bits - 1,)``, non-increasing (:func:`~brainfm.kernels.reference.adalog_tables`).

    Returns
    -------
    torch.Tensor
        uint8 codes in ``[0, 2**bits - 1]``, shape of ``x``.
    """
    bits = _bits(thresholds.numel())
    backend = backend_for(x)
    if backend == "reference":
        return ref.table_quantize_ref(x, thresholds)
    xf = x.contiguous().view(-1)
    t = thresholds.to(device=x.device, dtype=torch.float32).contiguous()
    codes = torch.empty(xf.shape, dtype=torch.uint8, device=x.device)
    n = xf.numel()
    if n:
        _table_quantize_kernel.launch(
            backend, lambda META: (triton.cdiv(n, META["BLOCK"]),), xf, t, codes, n, BITS=bits,
            interpret_meta={"BLOCK": _INTERPRET_BLOCK}, gpu_meta={"BLOCK": _GPU_BLOCK, "num_warps": 4})
    return codes.view(x.shape)


@adalog_quantize.register_fake
def _(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=torch.uint8, device=x.device)


@torch.library.custom_op("brainfm::adalog_dequantize", mutates_args=())
def adalog_dequantize(codes: torch.Tensor, levels: torch.Tensor,
                      out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``levels[codes]`` in ``out_dtype`` (inverse of :func:`adalog_quantize` up to rounding).

    Parameters
    ----------
    codes : torch.Tensor
        uint8, any shape, values below ``levels.numel()``.
    levels : torch.Tensor
        float32 ``(2**bits,)``.
    out_dtype : torch.dtype
        float32, float16 or bfloat16.
    """
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    _bits(levels.numel() - 1)
    backend = backend_for(codes)
    if backend == "reference":
        return ref.table_dequantize_ref(codes, levels, out_dtype)
    cf = codes.contiguous().view(-1)
    v = levels.to(device=codes.device, dtype=torch.float32).contiguous()
    y = torch.empty(cf.shape, dtype=store_dtype(out_dtype, backend), device=codes.device)
    n = cf.numel()
    if n:
        _table_dequantize_kernel.launch(
            backend, lambda META: (triton.cdiv(n, META["BLOCK"]),), cf, v, y, n,
            interpret_meta={"BLOCK": _INTERPRET_BLOCK}, gpu_meta={"BLOCK": _GPU_BLOCK, "num_warps": 4})
    return y.to(out_dtype).view(codes.shape)


@adalog_dequantize.register_fake
def _(codes: torch.Tensor, levels: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=out_dtype, device=codes.device)
