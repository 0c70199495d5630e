"""W4A16 linear: group-wise int4 weights, 16-bit activations, for memory-bound inference.

Weight format (defined in :mod:`brainfm.kernels.reference`): signed int4 in ``[-8, 7]``
packed two per byte along K (``(N, ceil(K / 2))`` uint8, low nibble = even k, high nibble
= odd k), one symmetric scale per ``group_size`` consecutive K values of each output
channel (``(N, ceil(K / group_size))``, fp16 by default). The kernel unpacks a weight tile
in registers, scales it, converts it to the activation dtype and feeds ``tl.dot`` with
fp32 accumulation, so weights cross HBM at 4 bits (plus ``16 / group_size`` bits of scale).

Two dispatch paths share one kernel body:

* ``M <= 16`` (streaming inference, a few tokens): a split-K GEMV. ``BLOCK_M = 16`` and
  ``SPLIT_K`` programs per column tile add fp32 partials atomically, which spreads the
  weight read over every SM even when ``N`` is small.
* ``M > 16``: a tiled GEMM, ``SPLIT_K = 1``, storing the output dtype directly.

Under the interpreter (and for fp32 activations) the dot runs in fp32: the Triton 3.6
interpreter returns garbage for bf16 ``tl.dot``.
"""

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._launch import DualKernel, as_2d, backend_for, store_dtype
from .configs import (W4A16_AMPERE, W4A16_FALLBACK, W4A16_GEMV_AMPERE, W4A16_GEMV_FALLBACK,
                      W4A16_GEMV_HOPPER, W4A16_GEMV_INTERPRET, W4A16_HOPPER, W4A16_INTERPRET,
                      arch_pruner)
from .reference import pack_int4, unpack_int4

__all__ = ["GEMV_MAX_M", "pack_int4", "quantize_weight_int4", "unpack_int4", "w4a16_linear"]

GEMV_MAX_M = 16


def _w4a16_body(x_ptr, w_ptr, s_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET,
                stride_xm, stride_wn, stride_sn, stride_cm,
                GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                SPLIT_K: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid % num_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)

    k_per_split = ((K + SPLIT_K - 1) // SPLIT_K + BLOCK_K - 1) // BLOCK_K * BLOCK_K
    k_start = pid_k * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < k_end
        x = tl.load(x_ptr + rm64[:, None] * stride_xm + kk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)  # (BLOCK_M, BLOCK_K)
        wk_mask = k_ok[:, None] & n_ok[None, :]
        packed = tl.load(w_ptr + rn64[None, :] * stride_wn + (kk // 2)[:, None], mask=wk_mask,
                         other=0)  # (BLOCK_K, BLOCK_N) uint8, each byte read for both of its k
        nib = (packed.to(tl.int32) >> ((kk % 2) * 4)[:, None]) & 0xF
        q = tl.where(nib >= 8, nib - 16, nib).to(tl.float32)
        scale = tl.load(s_ptr + rn64[None, :] * stride_sn + (kk // GROUP_SIZE)[:, None], mask=wk_mask,
                        other=0.0).to(tl.float32)
        w = q * scale  # (BLOCK_K, BLOCK_N) = dequantized W^T tile
        if DOT_FP32:
            acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))

    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, 1.0, 0.0) * bias[None, :]
    c_ptrs = c_ptr + rm64[:, None] * stride_cm + rn[None, :]
    c_mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        tl.atomic_add(c_ptrs, acc, mask=c_mask)


_KEY = ["M_BUCKET", "N", "K"]
_gemm = DualKernel(_w4a16_body, W4A16_HOPPER + W4A16_AMPERE + W4A16_FALLBACK, _KEY,
                   arch_pruner(W4A16_HOPPER, W4A16_AMPERE, W4A16_FALLBACK))
_gemv = DualKernel(_w4a16_body, W4A16_GEMV_HOPPER + W4A16_GEMV_AMPERE + W4A16_GEMV_FALLBACK, _KEY,
                   arch_pruner(W4A16_GEMV_HOPPER, W4A16_GEMV_AMPERE, W4A16_GEMV_FALLBACK),
                   reset_to_zero=["c_ptr"])


def quantize_weight_int4(w: torch.Tensor, group_size: int = 64,
                         scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize and pack an ``(N, K)`` weight for :func:`w4a16_linear`.

    Returns
    -------
    packed : torch.Tensor
        uint8, shape ``(N, ceil(K / 2))``.
    scales : torch.Tensor
        ``scale_dtype``, shape ``(N, ceil(K / group_size))``.
    """
    q, scales = ref.quantize_weight_int4_ref(w, group_size, scale_dtype)
    return pack_int4(q), scales


@torch.library.custom_op("brainfm::w4a16_linear", mutates_args=())
def w4a16_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(packed, scales).T + bias`` with fp32 accumulation, output in ``x.dtype``.

    Parameters
    ----------
    x : torch.Tensor
        bfloat16, float16 or float32 activations, shape ``(..., K)``.
    packed : torch.Tensor
        uint8 packed int4 weight, shape ``(N, ceil(K / 2))`` (see :func:`quantize_weight_int4`).
    scales : torch.Tensor
        Group scales, shape ``(N, ceil(K / group_size))``.
    group_size : int
        K values per scale (64 or 128 recommended).
    bias : torch.Tensor, optional
        Shape ``(N,)``.
    """
    k = x.shape[-1]
    n = packed.shape[0]
    if packed.dtype != torch.uint8 or packed.shape[1] != (k + 1) // 2:
        raise ValueError(f"packed must be uint8 (N, ceil(K/2)) with K={k}, got {packed.dtype} {tuple(packed.shape)}")
    if scales.shape != (n, -(-k // group_size)):
        raise ValueError(f"scales must have shape (N, ceil(K/group_size)) = {(n, -(-k // group_size))}")
    backend = backend_for(x)
    if backend == "reference":
        return ref.w4a16_linear_ref(x, packed, scales, group_size, bias)
    x2 = as_2d(x)  # (M, K)
    m = x2.shape[0]
    w = packed.contiguous()
    s = scales.contiguous()
    gemv = m <= GEMV_MAX_M
    if gemv:  # fp32 buffer that split-K programs add into
        out = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    else:
        out = torch.empty((m, n), dtype=store_dtype(x.dtype, backend), device=x.device)
    if m and n:
        kernel, cpu_meta = (_gemv, W4A16_GEMV_INTERPRET) if gemv else (_gemm, W4A16_INTERPRET)
        kernel.launch(
            backend,
            lambda META: (triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(n, META["BLOCK_N"]), META["SPLIT_K"]),
            x2, w, s, bias if bias is not None else s, out, m, n, k, triton.next_power_of_2(m),
            x2.stride(0), w.stride(0), s.stride(0), out.stride(0),
            GROUP_SIZE=group_size, HAS_BIAS=bias is not None,
            DOT_FP32=backend == "interpret" or x.dtype == torch.float32,
            interpret_meta=cpu_meta)
    return out.to(x.dtype).view(*x.shape[:-1], n)


@w4a16_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int,
      bias: torch.Tensor | None = None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], packed.shape[0]))
