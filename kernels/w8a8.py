"""W8A8 linear: int8 activations x int8 weights, int32 accumulation, fused epilogue.

Activations carry one scale per row (token, from :func:`~brainfm.kernels.quant.quantize_per_token`)
and weights one scale per output channel, the SmoothQuant W8A8 layout [1]_ and the
vector-wise scheme of LLM.int8() [2]_ (without its fp16 outlier path). Weights are stored
``(N, K)`` like ``nn.Linear.weight``. The epilogue dequantizes with
``row_scale * col_scale``, adds the bias, applies ``none | gelu | silu`` and writes bf16,
fp16 or fp32, so the int32 accumulator never goes to memory.

References
----------
.. [1] G. Xiao et al., "SmoothQuant", ICML 2023.
.. [2] T. Dettmers et al., "LLM.int8()", NeurIPS 2022.
"""

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._launch import as_2d, backend_for, dual_jit, store_dtype
from .configs import W8A8_AMPERE, W8A8_FALLBACK, W8A8_HOPPER, W8A8_INTERPRET, arch_pruner
from .quant import quantize_per_token

_ACT_CODE = {"none": 0, "gelu": 1, "silu": 2}


@dual_jit(configs=W8A8_HOPPER + W8A8_AMPERE + W8A8_FALLBACK, key=["M_BUCKET", "N", "K"],
          prune=arch_pruner(W8A8_HOPPER, W8A8_AMPERE, W8A8_FALLBACK))
def _w8a8_kernel(a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, K, M_BUCKET,
                 stride_am, stride_bn, stride_cm,
                 HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, GROUP_M: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Grouped program order: GROUP_M row-tiles share each column-tile of B while it is in L2.
    pid = tl.program_id(0)
    num_m = (M + BLOCK_M - 1) // BLOCK_M
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm.to(tl.int64)[:, None] * stride_am + rk[None, :]  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + rn.to(tl.int64)[None, :] * stride_bn + rk[:, None]  # (BLOCK_K, BLOCK_N) of W^T
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (k0 + rk[None, :] < K), other=0)
        b = tl.load(b_ptrs, mask=(k0 + rk[:, None] < K) & (rn[None, :] < N), other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    row_scale = tl.load(as_ptr + rm, mask=rm < M, other=0.0)
    col_scale = tl.load(bs_ptr + rn, mask=rn < N, other=0.0)
    y = acc.to(tl.float32) * row_scale[:, None] * col_scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == 1:
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACTIVATION == 2:
        y = y / (1.0 + tl.exp(-y))
    c_ptrs = c_ptr + rm.to(tl.int64)[:, None] * stride_cm + rn[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@torch.library.custom_op("brainfm::w8a8_linear", mutates_args=())
def w8a8_linear(qx: torch.Tensor, x_scale: torch.Tensor, qw: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, activation: str = "none",
                out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``act((qx @ qw.T) * x_scale[:, None] * w_scale[None, :] + bias)``.

    Parameters
    ----------
    qx : torch.Tensor
        int8 activations, shape ``(..., K)``.
    x_scale : torch.Tensor
        float32 per-row scales, shape ``qx.shape[:-1]``.
    qw : torch.Tensor
        int8 weight, shape ``(N, K)`` (``nn.Linear`` layout).
    w_scale : torch.Tensor
        float32 per-output-channel scales, shape ``(N,)``.
    bias : torch.Tensor, optional
        Shape ``(N,)``, any float dtype.
    activation : {"none", "gelu", "silu"}
        Epilogue activation (``gelu`` is the exact erf form).
    out_dtype : torch.dtype
        bfloat16 (default), float16 or float32.

    Returns
    -------
    torch.Tensor
        Shape ``(..., N)``, dtype ``out_dtype``.
    """
    if activation not in _ACT_CODE:
        raise ValueError(f"activation must be one of {tuple(_ACT_CODE)}, got {activation!r}")
    if qx.dtype != torch.int8 or qw.dtype != torch.int8:
        raise TypeError("w8a8_linear expects int8 activations and weights")
    if qx.shape[-1] != qw.shape[1]:
        raise ValueError(f"K mismatch: activations {tuple(qx.shape)}, weight {tuple(qw.shape)}")
    backend = backend_for(qx)
    if backend == "reference":
        return ref.w8a8_linear_ref(qx, x_scale, qw, w_scale, bias, activation, out_dtype)
    a = as_2d(qx)  # (M, K)
    w = qw if qw.stride(1) == 1 else qw.contiguous()  # (N, K)
    m, k = a.shape
    n = w.shape[0]
    xs = x_scale.reshape(-1).float().contiguous()
    ws = w_scale.reshape(-1).float().contiguous()
    out = torch.empty((m, n), dtype=store_dtype(out_dtype, backend), device=qx.device)
    if m and n:
        _w8a8_kernel.launch(
            backend, lambda META: (triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(n, META["BLOCK_N"]),),
            a, w, out, xs, ws, bias if bias is not None else ws, m, n, k, triton.next_power_of_2(m),
            a.stride(0), w.stride(0), out.stride(0),
            HAS_BIAS=bias is not None, ACTIVATION=_ACT_CODE[activation], GROUP_M=8,
            interpret_meta=W8A8_INTERPRET)
    return out.to(out_dtype).view(*qx.shape[:-1], n)


@w8a8_linear.register_fake
def _(qx: torch.Tensor, x_scale: torch.Tensor, qw: torch.Tensor, w_scale: torch.Tensor,
      bias: torch.Tensor | None = None, activation: str = "none",
      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return qx.new_empty((*qx.shape[:-1], qw.shape[0]), dtype=out_dtype)


def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of an ``(N, K)`` weight, one scale per output channel.

    Same numerics as :func:`~brainfm.kernels.quant.quantize_per_token` (a weight row is an
    output channel). Returns ``(qw int8 (N, K), w_scale float32 (N,))``.
    """
    if w.dim() != 2:
        raise ValueError(f"expected an (N, K) weight, got shape {tuple(w.shape)}")
    return quantize_per_token(w)


def w8a8_linear_dynamic(x: torch.Tensor, qw: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None = None, activation: str = "none",
                        out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Quantize ``x (..., K)`` per token, then :func:`w8a8_linear`; output in ``x.dtype`` by default."""
    qx, x_scale = quantize_per_token(x)
    return w8a8_linear(qx, x_scale, qw, w_scale, bias, activation, out_dtype or x.dtype)
