"""Fused ASH activation (Adaptive SwisH, Lee et al. 2022 [1]_): forward and backward kernels.

``ASH(x) = x * sigmoid(alpha * (x - mu - z * sigma))`` with scalar trainable ``alpha`` and
``z``; ``mu`` and ``sigma = sqrt(var + eps)`` (population variance) are taken per row
(token) over the last dim. One program holds whole rows, so the statistics, the gate and
the product cost one read of ``x`` and one write of ``y``; the forward also saves ``mu``
and ``sigma`` (8 bytes per row) for the backward.

Backward, per row of length ``D`` with ``u = x - mu - z * sigma``, ``s = sigmoid(alpha * u)``,
``g = dy * x * s * (1 - s)`` and ``xhat = (x - mu) / sigma``::

    dx     = dy * s + alpha * (g - mean(g) - z * xhat * mean(g))
    dalpha = sum(g * u)                  (summed over rows on the host side)
    dz     = -alpha * sigma * sum(g)     (idem)

A constant row has ``var = 0``, ``sigma = sqrt(eps)`` and ``xhat = 0``: no NaN.

References
----------
.. [1] K. Lee, J. Yang, H. Lee, J. Y. Hwang, "Stochastic Adaptive Activation Function",
   NeurIPS 2022, arXiv:2210.11672.
"""

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._launch import SUM_COMBINE, as_2d, backend_for, combine_fns, dual_jit, store_dtype
from .configs import interpret_row_meta, row_meta

MAX_D = 16384  # whole rows live in registers


@dual_jit()
def _ash_fwd_kernel(x_ptr, y_ptr, mu_ptr, sig_ptr, alpha_ptr, z_ptr, M, D, stride_xm, stride_ym, eps,
                    SUM_FN: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols[None, :] < D)
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if INTERPRET:  # each backend its own combine function: see _launch.combine_fns
        mu = tl.reduce(x, 1, SUM_FN) / D
    else:
        mu = tl.reduce(x, 1, SUM_COMBINE) / D
    xc = tl.where(mask, x - mu[:, None], 0.0)
    if INTERPRET:
        var = tl.reduce(xc * xc, 1, SUM_FN) / D
    else:
        var = tl.reduce(xc * xc, 1, SUM_COMBINE) / D
    sigma = tl.sqrt(var + eps)
    alpha = tl.load(alpha_ptr).to(tl.float32)
    z = tl.load(z_ptr).to(tl.float32)
    gate = 1.0 / (1.0 + tl.exp(-alpha * (xc - z * sigma[:, None])))
    tl.store(y_ptr + rows64[:, None] * stride_ym + cols[None, :], (x * gate).to(y_ptr.dtype.element_ty),
             mask=mask)
    tl.store(mu_ptr + rows64, mu, mask=row_ok)
    tl.store(sig_ptr + rows64, sigma, mask=row_ok)


@dual_jit()
def _ash_bwd_kernel(gy_ptr, x_ptr, mu_ptr, sig_ptr, alpha_ptr, z_ptr, gx_ptr, ga_ptr, gz_ptr, M, D,
                    stride_gym, stride_xm, stride_gxm,
                    SUM_FN: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols[None, :] < D)
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    gy = tl.load(gy_ptr + rows64[:, None] * stride_gym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mu = tl.load(mu_ptr + rows64, mask=row_ok, other=0.0)
    sigma = tl.load(sig_ptr + rows64, mask=row_ok, other=1.0)
    alpha = tl.load(alpha_ptr).to(tl.float32)
    z = tl.load(z_ptr).to(tl.float32)

    xc = tl.where(mask, x - mu[:, None], 0.0)
    u = xc - z * sigma[:, None]
    s = 1.0 / (1.0 + tl.exp(-alpha * u))
    g = gy * x * s * (1.0 - s)  # dL/d(alpha * u); masked lanes load gy = x = 0, so g = 0
    if INTERPRET:  # each backend its own combine function: see _launch.combine_fns
        sum_g = tl.reduce(g, 1, SUM_FN)
        sum_gu = tl.reduce(g * u, 1, SUM_FN)
    else:
        sum_g = tl.reduce(g, 1, SUM_COMBINE)
        sum_gu = tl.reduce(g * u, 1, SUM_COMBINE)
    mean_g = sum_g / D
    xhat = xc / sigma[:, None]
    gx = gy * s + alpha * (g - mean_g[:, None] - z * xhat * mean_g[:, None])
    tl.store(gx_ptr + rows64[:, None] * stride_gxm + cols[None, :], gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(ga_ptr + rows64, sum_gu, mask=row_ok)
    tl.store(gz_ptr + rows64, -alpha * sigma * sum_g, mask=row_ok)


def _metas(m: int, d: int) -> tuple[dict, dict]:
    if d > MAX_D:
        raise ValueError(f"fused ASH keeps whole rows in registers: last dim {d} > {MAX_D}")
    return interpret_row_meta(m, d), row_meta(d, max_block=MAX_D)


@torch.library.custom_op("brainfm::ash_fwd", mutates_args=())
def ash_fwd(x: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor,
            eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward kernel: returns ``(y, mu, sigma)``, ``mu`` and ``sigma`` float32 of shape ``(M,)``."""
    backend = backend_for(x)
    x2 = as_2d(x)  # (M, D)
    m, d = x2.shape
    if backend == "reference":
        xf = x2.float()
        sigma = torch.sqrt(xf.var(dim=-1, unbiased=False) + eps)
        return ref.ash_ref(x, alpha, z, eps), xf.mean(dim=-1), sigma
    y = torch.empty((m, d), dtype=store_dtype(x.dtype, backend), device=x.device)
    mu = torch.empty((m,), dtype=torch.float32, device=x.device)
    sigma = torch.empty_like(mu)
    if m and d:
        cpu, gpu = _metas(m, d)
        _ash_fwd_kernel.launch(backend, lambda META: (triton.cdiv(m, META["BLOCK_M"]),),
                               x2, y, mu, sigma, alpha, z, m, d, x2.stride(0), y.stride(0), eps,
                               SUM_FN=combine_fns(backend)["SUM_FN"], INTERPRET=backend == "interpret",
                               interpret_meta=cpu, gpu_meta=gpu)
    return y.to(x.dtype).view(x.shape), mu, sigma


@ash_fwd.register_fake
def _(x: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor,
      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    return torch.empty_like(x), x.new_empty((m,), dtype=torch.float32), x.new_empty((m,), dtype=torch.float32)


@torch.library.custom_op("brainfm::ash_bwd", mutates_args=())
def ash_bwd(gy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
            sigma: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward kernel: returns ``(dx, dalpha, dz)``; ``dalpha``, ``dz`` float32 scalars."""
    backend = backend_for(x)
    if backend == "reference":
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (x, alpha, z)]
            gx, ga, gz = torch.autograd.grad(ref.ash_ref(*leaves, eps), leaves, gy)
        return gx, ga.float().sum(), gz.float().sum()
    x2, gy2 = as_2d(x), as_2d(gy)  # (M, D)
    m, d = x2.shape
    gx = torch.empty((m, d), dtype=store_dtype(x.dtype, backend), device=x.device)
    ga = torch.zeros((m,), dtype=torch.float32, device=x.device)
    gz = torch.zeros_like(ga)
    if m and d:
        cpu, gpu = _metas(m, d)
        _ash_bwd_kernel.launch(backend, lambda META: (triton.cdiv(m, META["BLOCK_M"]),),
                               gy2, x2, mu, sigma, alpha, z, gx, ga, gz, m, d,
                               gy2.stride(0), x2.stride(0), gx.stride(0),
                               SUM_FN=combine_fns(backend)["SUM_FN"], INTERPRET=backend == "interpret",
                               interpret_meta=cpu, gpu_meta=gpu)
    return gx.to(x.dtype).view(x.shape), ga.sum(), gz.sum()


@ash_bwd.register_fake
def _(gy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
      sigma: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scalar = x.new_empty((), dtype=torch.float32)
    return torch.empty_like(x), scalar, scalar.clone()


class ASHFunction(torch.autograd.Function):
    """Autograd wrapper over :func:`ash_fwd` / :func:`ash_bwd` (gradients for x, alpha, z)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
        y, mu, sigma = ash_fwd(x, alpha, z, eps)
        ctx.save_for_backward(x, alpha, z, mu, sigma)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, alpha, z, mu, sigma = ctx.saved_tensors
        gx, ga, gz = ash_bwd(gy.contiguous(), x, alpha, z, mu, sigma, ctx.eps)
        return gx, ga.to(alpha.dtype).reshape(alpha.shape), gz.to(z.dtype).reshape(z.shape), None


def fused_ash(x: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Fused ASH over the last dim of ``x`` (any leading shape); ``alpha``, ``z`` one-element tensors.

    CPU tensors without ``TRITON_INTERPRET=1`` use :func:`~brainfm.kernels.reference.ash_ref`
    directly (plain autograd).
    """
    if alpha.numel() != 1 or z.numel() != 1:
        raise ValueError("ASH alpha and z must be one-element tensors")
    if backend_for(x) == "reference":
        return ref.ash_ref(x, alpha, z, eps)
    return ASHFunction.apply(x, alpha, z, eps)
