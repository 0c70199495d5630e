"""W6A8 linear: densely packed int6 weights x per-token int8 activations, int32 accumulation.

FlexQ (2025) [1]_ quantizes weights uniformly to INT6 and keeps 8-bit activations where a
layer-wise sensitivity analysis asks for them; its kernel runs W6A6/W6A8 matmuls on int8
tensor cores. This is the W6A8 half of that design, following
:mod:`brainfm.kernels.w4a16` for the packing and :mod:`brainfm.kernels.w8a8` for the
integer GEMM:

* weights: symmetric per output channel (``s = max|w| / 31``), four 6-bit fields packed
  into three bytes along K (``(N, 3 * ceil(K / 4))`` uint8; the layout is defined in
  :mod:`brainfm.kernels.reference`), so they cross HBM at 6 bits, 25 % less than int8;
* the kernel reads the two bytes that hold each field, sign-extends it to int8 in
  registers and feeds ``tl.dot`` with int32 accumulation, so the result is the same
  integer product as W8A8 on the unpacked weight (:func:`~brainfm.kernels.reference.w6a8_linear_ref`);
* the epilogue dequantizes with ``row_scale * col_scale``, adds the bias and applies
  ``none | gelu | silu`` as W8A8 does.

Dispatch: ``M > 16`` runs a tiled GEMM; ``M <= 16`` (streaming, a few tokens) a split-K
GEMV whose programs add fp32 partials atomically (its activation, if any, runs after the
reduction in PyTorch, on an ``(M, N)`` tile of at most 16 rows).

References
----------
.. [1] "FlexQ: Efficient Post-training INT6 Quantization for LLM Serving via
   Algorithm-System Co-Design", 2025, arXiv:2508.04405.
"""

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._launch import DualKernel, as_2d, backend_for, store_dtype
from .configs import (W6A8_AMPERE, W6A8_FALLBACK, W6A8_GEMV_AMPERE, W6A8_GEMV_FALLBACK, W6A8_GEMV_HOPPER,
                      W6A8_GEMV_INTERPRET, W6A8_HOPPER, W6A8_INTERPRET, arch_pruner)
from .quant import quantize_per_token
from .reference import pack_int6, unpack_int6

__all__ = ["GEMV_MAX_M", "pack_int6", "quantize_weight_int6", "unpack_int6", "w6a8_linear", "w6a8_linear_dynamic"]

GEMV_MAX_M = 16
_ACT_CODE = {"none": 0, "gelu": 1, "silu": 2}


def _w6a8_body(a_ptr, w_ptr, c_ptr, as_ptr, ws_ptr, bias_ptr, M, N, K, M_BUCKET,
               stride_am, stride_wn, stride_cm,
               HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
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
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    for k0 in range(k_start, k_end, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < k_end
        a = tl.load(a_ptr + rm64[:, None] * stride_am + kk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0)  # (BLOCK_M, BLOCK_K) int8
        # field i = k % 4 of word j = k // 4 sits at bit 6 i of bytes 3 j .. 3 j + 2: read the
        # (one or two) bytes that hold it, shift and sign-extend.
        bit = (kk % 4) * 6
        byte = (kk // 4) * 3 + bit // 8
        byte_hi = (kk // 4) * 3 + (bit + 5) // 8
        wk_mask = k_ok[:, None] & n_ok[None, :]
        row = w_ptr + rn64[None, :] * stride_wn
        lo = tl.load(row + byte[:, None], mask=wk_mask, other=0).to(tl.int32)  # (BLOCK_K, BLOCK_N)
        hi = tl.load(row + byte_hi[:, None], mask=wk_mask, other=0).to(tl.int32)
        f = ((lo | (hi << 8)) >> (bit % 8)[:, None]) & 0x3F
        w = tl.where(f >= 32, f - 64, f).to(tl.int8)  # (BLOCK_K, BLOCK_N) = int6 W^T tile
        acc += tl.dot(a, w, out_dtype=tl.int32)

    row_scale = tl.load(as_ptr + rm, mask=m_ok, other=0.0)
    col_scale = tl.load(ws_ptr + rn, mask=n_ok, other=0.0)
    y = acc.to(tl.float32) * row_scale[:, None] * col_scale[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        y += tl.where(pid_k == 0, 1.0, 0.0) * bias[None, :]
    if ACTIVATION == 1:
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACTIVATION == 2:
        y = y / (1.0 + tl.exp(-y))
    c_ptrs = c_ptr + rm64[:, None] * stride_cm + rn[None, :]
    c_mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        tl.atomic_add(c_ptrs, y, mask=c_mask)


_KEY = ["M_BUCKET", "N", "K"]
_gemm = DualKernel(_w6a8_body, W6A8_HOPPER + W6A8_AMPERE + W6A8_FALLBACK, _KEY,
                   arch_pruner(W6A8_HOPPER, W6A8_AMPERE, W6A8_FALLBACK))
_gemv = DualKernel(_w6a8_body, W6A8_GEMV_HOPPER + W6A8_GEMV_AMPERE + W6A8_GEMV_FALLBACK, _KEY,
                   arch_pruner(W6A8_GEMV_HOPPER, W6A8_GEMV_AMPERE, W6A8_GEMV_FALLBACK), reset_to_zero=["c_ptr"])


def quantize_weight_int6(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize and pack an ``(N, K)`` weight for :func:`w6a8_linear`.

    Returns ``(packed uint8 (N, 3 * ceil(K / 4)), scale float32 (N,))``.
    """
    if w.dim() != 2:
        raise ValueError(f"expected an (N, K) weight, got shape {tuple(w.shape)}")
    q, scale = ref.quantize_weight_int6_ref(w)
    return pack_int6(q), scale


@torch.library.custom_op("brainfm::w6a8_linear", mutates_args=())
def w6a8_linear(qx: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, activation: str = "none",
                out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``act((qx @ unpack(packed).T) * x_scale[:, None] * w_scale[None, :] + bias)``.

    Parameters
    ----------
    qx : torch.Tensor
        int8 activations ``(..., K)`` (:func:`~brainfm.kernels.quantize_per_token`).
    x_scale : torch.Tensor
        float32 per-row scales, shape ``qx.shape[:-1]``.
    packed : torch.Tensor
        uint8 int6 weight, shape ``(N, 3 * ceil(K / 4))`` (:func:`quantize_weight_int6`).
    w_scale : torch.Tensor
        float32 per-output-channel scales ``(N,)``.
    bias : torch.Tensor, optional
        ``(N,)``.
    activation : {"none", "gelu", "silu"}
    out_dtype : torch.dtype
        bfloat16 (default), float16 or float32.
    """
    if activation not in _ACT_CODE:
        raise ValueError(f"activation must be one of {tuple(_ACT_CODE)}, got {activation!r}")
    if qx.dtype != torch.int8 or packed.dtype != torch.uint8:
        raise TypeError("w6a8_linear expects int8 activations and a uint8 packed int6 weight")
    k = qx.shape[-1]
    n = packed.shape[0]
    if packed.dim() != 2 or packed.shape[1] != 3 * -(-k // 4):
        raise ValueError(f"packed must be uint8 (N, 3*ceil(K/4)) with K={k}, got {tuple(packed.shape)}")
    if w_scale.numel() != n:
        raise ValueError(f"w_scale must have N={n} entries, got {w_scale.numel()}")
    backend = backend_for(qx)
    if backend == "reference":
        return ref.w6a8_linear_ref(qx, x_scale, packed, w_scale, bias, activation, out_dtype)
    a = as_2d(qx)  # (M, K)
    w = packed.contiguous()
    m = a.shape[0]
    xs = x_scale.reshape(-1).float().contiguous()
    ws = w_scale.reshape(-1).float().contiguous()
    gemv = m <= GEMV_MAX_M
    if gemv:  # fp32 buffer the split-K programs add into; activation after the reduction
        out = torch.zeros((m, n), dtype=torch.float32, device=qx.device)
    else:
        out = torch.empty((m, n), dtype=store_dtype(out_dtype, backend), device=qx.device)
    if m and n:
        kernel, cpu_meta = (_gemv, W6A8_GEMV_INTERPRET) if gemv else (_gemm, W6A8_INTERPRET)
        kernel.launch(
            backend,
            lambda META: (triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(n, META["BLOCK_N"]), META["SPLIT_K"]),
            a, w, out, xs, ws, bias if bias is not None else ws, m, n, k, triton.next_power_of_2(m),
            a.stride(0), w.stride(0), out.stride(0),
            HAS_BIAS=bias is not None, ACTIVATION=0 if gemv else _ACT_CODE[activation],
            interpret_meta=cpu_meta)
    if gemv:
        out = ref.apply_activation_ref(out, activation)
    return out.to(out_dtype).view(*qx.shape[:-1], n)


@w6a8_linear.register_fake
def _(qx: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
      bias: torch.Tensor | None = None, activation: str = "none",
      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return qx.new_empty((*qx.shape[:-1], packed.shape[0]), dtype=out_dtype)


def w6a8_linear_dynamic(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None = None, activation: str = "none",
                        out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Quantize ``x (..., K)`` per token, then :func:`w6a8_linear`; output in ``x.dtype`` by default."""
    qx, x_scale = quantize_per_token(x)
    return w6a8_linear(qx, x_scale, packed, w_scale, bias, activation, out_dtype or x.dtype)
