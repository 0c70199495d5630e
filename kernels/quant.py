"""Dynamic per-token int8 quantization and its inverse (kernel, custom op, reference).

Activations are quantized row by row at run time, as in SmoothQuant's per-token scheme
[1]_ and LLM.int8()'s vector-wise quantization [2]_. The numerics are defined once in
:func:`brainfm.kernels.reference.quantize_per_token_ref`; the kernel matches it bit for bit:

* ``a = max|x|`` over the row, ``s = a / 127``, ``q = clamp(rint(x * (127 / a)), -127, 127)``,
  ``rint`` rounding half to even; an all-zero row gives ``s = 1`` and ``q = 0`` (no NaN).
* Both divisions are IEEE round-to-nearest (``tl.math.div_rn`` on the GPU, where Triton's
  ``/`` is the approximate ``div.full.f32``), and ``rint`` is libdevice ``rint`` on the GPU.
  The interpreter has neither, so it uses ``/`` (numpy, already IEEE) and the
  ``(v + 1.5 * 2**23) - 1.5 * 2**23`` round-half-even identity, exact for ``|v| < 2**22``.
* When the whole row fits one block the row is read once (absmax, scale and quantization
  fused in one pass); longer rows are read twice.

References
----------
.. [1] G. Xiao et al., "SmoothQuant", ICML 2023.
.. [2] T. Dettmers et al., "LLM.int8()", NeurIPS 2022.
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import reference as ref
from ._launch import MAX_COMBINE, as_2d, backend_for, combine_fns, dual_jit, store_dtype
from .configs import interpret_row_meta, row_meta

_RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds fp32 half to even


@dual_jit()
def _quantize_rowwise_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm,
                             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                             ONE_PASS: tl.constexpr, INTERPRET: tl.constexpr, MAX_FN: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if INTERPRET:  # each backend its own combine function: see _launch.combine_fns
            absmax = tl.reduce(tl.abs(x), 1, MAX_FN)
        else:
            absmax = tl.reduce(tl.abs(x), 1, MAX_COMBINE)
    else:
        absmax = tl.full([BLOCK_M], 0.0, tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = row_ok[:, None] & (k0 + cols[None, :] < K)
            xk = tl.load(x_ptr + rows64[:, None] * stride_xm + k0 + cols[None, :], mask=mask, other=0.0)
            if INTERPRET:
                absmax = tl.maximum(absmax, tl.reduce(tl.abs(xk.to(tl.float32)), 1, MAX_FN))
            else:
                absmax = tl.maximum(absmax, tl.reduce(tl.abs(xk.to(tl.float32)), 1, MAX_COMBINE))

    nonzero = absmax > 0.0
    safe = tl.where(nonzero, absmax, 1.0)
    if INTERPRET:
        scale = safe / 127.0
        inv = 127.0 / safe
    else:
        scale = tl.math.div_rn(safe, tl.full([BLOCK_M], 127.0, tl.float32))
        inv = tl.math.div_rn(tl.full([BLOCK_M], 127.0, tl.float32), safe)
    scale = tl.where(nonzero, scale, 1.0)
    inv = tl.where(nonzero, inv, 0.0)
    tl.store(s_ptr + rows64, scale, mask=row_ok)

    for k0 in range(0, K, BLOCK_K):
        mask = row_ok[:, None] & (k0 + cols[None, :] < K)
        if not ONE_PASS:
            x = tl.load(x_ptr + rows64[:, None] * stride_xm + k0 + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
        v = x * inv[:, None]
        if INTERPRET:
            r = (v + _RNE_MAGIC) - _RNE_MAGIC
        else:
            r = libdevice.rint(v)
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        tl.store(q_ptr + rows64[:, None] * stride_qm + k0 + cols[None, :], r.to(tl.int8), mask=mask)


@dual_jit()
def _dequantize_rowwise_kernel(q_ptr, s_ptr, y_ptr, M, K, stride_qm, stride_ym,
                               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols[None, :] < K)
    rows64 = rows.to(tl.int64)
    q = tl.load(q_ptr + rows64[:, None] * stride_qm + cols[None, :], mask=mask, other=0).to(tl.float32)
    s = tl.load(s_ptr + rows64, mask=row_ok, other=0.0)
    y = q * s[:, None]
    tl.store(y_ptr + rows64[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("brainfm::quantize_per_token", mutates_args=())
def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of each row (token) of ``x``.

    Parameters
    ----------
    x : torch.Tensor
        float32, float16 or bfloat16, shape ``(..., K)``.

    Returns
    -------
    q : torch.Tensor
        int8, shape ``(..., K)``.
    scale : torch.Tensor
        float32, shape ``x.shape[:-1]``; ``x ~ q * scale[..., None]``.
    """
    backend = backend_for(x)
    if backend == "reference":
        return ref.quantize_per_token_ref(x)
    x2 = as_2d(x)  # (M, K)
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m and k:
        gpu = row_meta(k)
        cpu = interpret_row_meta(m, k)
        meta = cpu if backend == "interpret" else gpu
        _quantize_rowwise_kernel.launch(
            backend, lambda META: (triton.cdiv(m, META["BLOCK_M"]),),
            x2, q, s, m, k, x2.stride(0), q.stride(0),
            ONE_PASS=meta["BLOCK_K"] >= k, INTERPRET=backend == "interpret",
            MAX_FN=combine_fns(backend)["MAX_FN"],
            interpret_meta=cpu, gpu_meta=gpu)
    elif m:
        s.fill_(1.0)
    return q.view(x.shape), s.view(x.shape[:-1])


@quantize_per_token.register_fake
def _(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device))


@torch.library.custom_op("brainfm::dequantize_per_token", mutates_args=())
def dequantize_per_token(q: torch.Tensor, scale: torch.Tensor,
                         out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_per_token`: ``(q * scale[..., None]).to(out_dtype)``.

    Parameters
    ----------
    q : torch.Tensor
        int8, shape ``(..., K)``.
    scale : torch.Tensor
        float32, shape ``q.shape[:-1]``.
    out_dtype : torch.dtype
        float32, float16 or bfloat16.
    """
    backend = backend_for(q)
    if backend == "reference":
        return ref.dequantize_per_token_ref(q, scale, out_dtype)
    q2 = as_2d(q)  # (M, K)
    m, k = q2.shape
    s = scale.reshape(-1).float().contiguous()
    y = torch.empty((m, k), dtype=store_dtype(out_dtype, backend), device=q.device)
    if m and k:
        gpu = {"BLOCK_M": 8, "BLOCK_K": min(triton.next_power_of_2(k), 1024), "num_warps": 4}
        cpu = interpret_row_meta(m, k)
        _dequantize_rowwise_kernel.launch(
            backend, lambda META: (triton.cdiv(m, META["BLOCK_M"]), triton.cdiv(k, META["BLOCK_K"])),
            q2, s, y, m, k, q2.stride(0), y.stride(0), interpret_meta=cpu, gpu_meta=gpu)
    return y.to(out_dtype).view(q.shape)


@dequantize_per_token.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(q.shape, dtype=out_dtype, device=q.device)
