"""Activation-aware per-input-channel scaling: SmoothQuant for W8A8, AWQ-style for W4A16.

A linear layer computes ``y = W x``; for any positive vector ``m`` of length ``K`` it also
computes ``y = (W diag(1 / m)) (x * m)``. Choosing ``m`` moves quantization difficulty
between the activation and the weight:

SmoothQuant [1]_ (W8A8)
    Per-token int8 activations suffer from a few input channels with large magnitude
    (outlier channels). With ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``max|W_j|``
    over output channels of input column ``j``) and ``m = 1 / s``, the activation channels
    are flattened and the weight columns grow by the same factor; ``alpha = 0.5`` splits the
    difficulty evenly (the paper's default).
AWQ [2]_ (W4A16)
    Weight-only quantization error matters most on input channels that carry large
    activations (salient channels). With ``s_j = mean|X_j|^alpha`` (normalised so that
    ``sqrt(max s * min s) = 1``) the salient weight columns are scaled up before rounding, so
    their relative rounding error shrinks; ``alpha`` is grid-searched per layer to minimise
    the output error on sampled calibration rows. ``alpha = 0`` is plain round-to-nearest, so
    the search never does worse than no scaling on those rows. AWQ's weight-clipping search
    is not implemented.

Where ``1 / s`` goes. SmoothQuant folds ``1 / s`` into the previous operator (the LayerNorm
affine before QKV and FFN-up), so the scaling is free at run time. brainfm instead stores
``m`` in the quantized layer and multiplies the activation by it before quantizing. That
costs one elementwise multiply of ``K`` values per token (a few percent of a ``K x N`` GEMM
with ``N >= K``), but it is correct for every layer: the criss-cross QKV projections read
*halves* of the LayerNorm output, ``out_s``/``out_t`` read attention outputs, FFN-down reads
an activation output (GELU/ASH cannot absorb a scale), and the patch projections read a conv
branch and an rFFT magnitude. Folding would need a rule per producer; a fused ``x * m``
inside the quantize kernel would remove the remaining cost.

References
----------
.. [1] G. Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
   Large Language Models", ICML 2023.
.. [2] J. Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
   Acceleration", MLSys 2024.
"""

from __future__ import annotations

import torch

from brainfm.kernels.reference import (dequantize_int4_ref, pack_int4, quantize_per_token_ref, quantize_weight_int4_ref,
                                       quantize_weight_int6_ref)

#: Grid of migration strengths searched by :func:`search_multiplier`.
ALPHA_GRID = tuple(i / 10 for i in range(11))


def smoothquant_multiplier(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5,
                           eps: float = 1e-5) -> torch.Tensor:
    """SmoothQuant's activation multiplier ``m = 1 / s``, ``s = max|X|^a / max|W|^(1-a)``.

    Parameters
    ----------
    act_absmax : torch.Tensor
        ``(K,)`` per-input-channel ``max |x|`` from calibration.
    weight : torch.Tensor
        ``(N, K)`` ``nn.Linear`` weight.
    alpha : float
        Migration strength in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        ``(K,)`` float32. Channels whose activation or weight column is all zero get 1.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = act_absmax.float()
    w = weight.detach().float().abs().amax(dim=0)  # (K,)
    live = (a > 0) & (w > 0)
    s = a.clamp_min(eps).pow(alpha) / w.clamp_min(eps).pow(1.0 - alpha)
    s = torch.where(live, s.clamp(1e-4, 1e4), torch.ones_like(s))
    return 1.0 / s


def awq_multiplier(act_mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's activation multiplier ``m = 1 / s``, ``s = mean|X|^alpha`` normalised to unit geometric mid-range."""
    s = act_mean_abs.float().clamp_min(1e-4).pow(alpha)
    s = s / (s.max() * s.min()).sqrt()
    return 1.0 / s


def simulate(rows: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor | None, scheme: str,
             group_size: int = 64) -> torch.Tensor:
    """Output ``(R, N)`` (no bias) of the quantized layer on ``rows`` ``(R, K)``, via the references.

    ``scheme`` is a layer kind (``w8a8``, ``w6a8``, ``w4a16``) or ``a8`` (float weights, int8
    per-token activations: the activation half of the A8 schemes alone).
    """
    w = weight.detach().float()
    x = rows.float()
    if multiplier is not None:
        w = w / multiplier[None, :]
        x = x * multiplier[None, :]
    if scheme in ("w8a8", "w6a8", "a8"):
        qx, sx = quantize_per_token_ref(x)
        if scheme == "w8a8":
            qw, sw = quantize_per_token_ref(w)
            w = qw.float() * sw[:, None]
        elif scheme == "w6a8":
            qw, sw = quantize_weight_int6_ref(w)
            w = qw.float() * sw[:, None]
        return (qx.float() * sx[:, None]) @ w.T
    if scheme == "w4a16":
        q, scales = quantize_weight_int4_ref(w, group_size)
        return x @ dequantize_int4_ref(pack_int4(q), scales, w.shape[1], group_size).T
    raise ValueError(f"unknown scheme {scheme!r}")


def output_error(rows: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor | None, scheme: str,
                 group_size: int = 64) -> float:
    """Relative squared output error ``|Y_q - Y|^2 / |Y|^2`` of the quantized layer on ``rows``."""
    ref = rows.float() @ weight.detach().float().T
    err = (simulate(rows, weight, multiplier, scheme, group_size) - ref).pow(2).sum()
    return float(err / ref.pow(2).sum().clamp_min(1e-30))


def search_multiplier(rows: torch.Tensor, act_absmax: torch.Tensor, act_mean_abs: torch.Tensor,
                      weight: torch.Tensor, scheme: str, group_size: int = 64,
                      alphas: tuple[float, ...] = ALPHA_GRID) -> tuple[torch.Tensor | None, float]:
    """Grid-search ``alpha`` for the scheme's scaling rule on calibration ``rows``.

    ``w8a8`` and ``w6a8`` use :func:`smoothquant_multiplier`, ``w4a16`` :func:`awq_multiplier`.

    Returns
    -------
    multiplier : torch.Tensor or None
        None when no scaling (``alpha = 0`` for AWQ) is best.
    alpha : float
        The chosen strength.
    """
    best: tuple[float, torch.Tensor | None, float] = (output_error(rows, weight, None, scheme, group_size), None, 0.0)
    for alpha in alphas:
        if scheme in ("w8a8", "w6a8"):
            m = smoothquant_multiplier(act_absmax, weight, alpha)
        elif alpha > 0:
            m = awq_multiplier(act_mean_abs, alpha)
        else:
            continue
        err = output_error(rows, weight, m, scheme, group_size)
        if err < best[0]:
            best = (err, m, alpha)
    return best[1], best[2]
