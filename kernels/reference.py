"""Pure-PyTorch references for every op in :mod:`brainfm.kernels`.

This module is the single home of the numerics: the tests compare the Triton kernels
against it, the benchmarks time it as the eager baseline, and the launchers run it on CPU
when the Triton interpreter is off. Definitions (kept identical in the kernels):

* **Per-token int8** (SmoothQuant [1]_, LLM.int8() [2]_ vector-wise): for each row,
  ``a = max|x|``, ``s = a / 127`` and ``q = clamp(rint(x * (127 / a)), -127, 127)`` with
  ``rint`` = round half to even. An all-zero row gets ``s = 1`` and ``q = 0``.
* **W8A8**: ``y = act((q_x @ q_w.T) * s_x[:, None] * s_w[None, :] + b)`` with int32
  accumulation; ``act`` in ``none | gelu`` (erf form) ``| silu``.
* **Int4 weights**: signed two's-complement nibbles in ``[-8, 7]``, packed two per byte
  along K: byte ``(n, j)`` holds ``w[n, 2j]`` in the low nibble and ``w[n, 2j + 1]`` in the
  high nibble (a zero nibble pads odd K). Scales are symmetric per group of ``group_size``
  consecutive K elements of one output channel: ``s = max|w| / 7`` (1 for an all-zero
  group), ``q = clamp(rint(w / s), -8, 7)``, ``w ~ q * s``.
* **Int6 weights** (FlexQ [5]_ layout): symmetric per output channel, ``s = max|w| / 31``
  (1 for an all-zero row), ``q = clamp(rint(w / s), -32, 31)``, packed densely four per
  three bytes along K: the 24-bit little-endian word of bytes ``(n, 3j .. 3j + 2)`` holds
  ``w[n, 4j + i]`` as a 6-bit two's-complement field at bit ``6 i`` (zero fields pad K to
  a multiple of 4). **W6A8** is W8A8 with these weights: ``y = act((q_x @ q_w.T) * s_x * s_w + b)``.
* **Table (codebook) quantizers** (AdaLog [4]_ and its uniform baseline): a per-tensor
  quantizer is a descending threshold vector ``t`` (``L = 2**bits - 1`` entries, in the
  input's domain, non-increasing) and a level vector ``v`` (``2**bits`` entries). The code of ``x`` is
  ``#{k : x < t_k}`` (``uint8``) and the dequantized value ``v[code]``. With AdaLog's base
  ``a = 2**(q / r)`` (``r = 37``, integer ``q``), scale ``s`` and shift ``beta`` (bias
  reparameterisation for post-GELU/ASH tensors), ``v_i = s * a**-i - beta`` for
  ``i < L`` and ``v_L = -beta`` (the zero code), ``t_k = s * a**-(k + 1/2) - beta``: exactly
  rounding ``-log_a((x + beta) / s)`` to the nearest integer, values above ``s`` to code 0
  and values that round past the last level to zero. Comparisons and a gather are exact in
  any backend, so the kernels match this reference bit for bit.
* **ASH** (Lee et al. 2022 [3]_): ``x * sigmoid(alpha * (x - mu - z * sigma))`` with
  ``mu``, ``sigma = sqrt(var + eps)`` (population variance) over the last dim.

References
----------
.. [1] G. Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
   Large Language Models", ICML 2023.
.. [2] T. Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at
   Scale", NeurIPS 2022.
.. [3] K. Lee, J. Yang, H. Lee, J. Y. Hwang, "Stochastic Adaptive Activation Function"
   (Adaptive SwisH, ASH), NeurIPS 2022, arXiv:2210.11672.
.. [4] Z. Wu et al., "AdaLog: Post-Training Quantization for Vision Transformers with
   Adaptive Logarithm Quantizer", ECCV 2024, arXiv:2407.12951.
.. [5] "FlexQ: Efficient Post-training INT6 Quantization for LLM Serving via
   Algorithm-System Co-Design", 2025, arXiv:2508.04405.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Epilogue activations the quantized GEMMs fuse after dequantization (``activation=``); the
#: activations a model config selects are ``brainfm.models.activations.MODEL_ACTIVATIONS``.
ACTIVATIONS = ("none", "gelu", "silu")


def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization per row (token) of ``x`` with shape ``(..., K)``.

    Returns
    -------
    q : torch.Tensor
        int8, same shape as ``x``.
    scale : torch.Tensor
        float32, shape ``x.shape[:-1]``; ``x ~ q * scale[..., None]``.
    """
    xf = x.float()
    absmax = xf.abs().amax(dim=-1, keepdim=True)
    nonzero = absmax > 0
    safe = torch.where(nonzero, absmax, torch.ones_like(absmax))
    # Tensor-by-tensor division: torch computes `127.0 / t` as `t.reciprocal() * 127` and, on
    # CUDA, `t / 127.0` as `t * (1 / 127)`; both can differ from IEEE division by one ulp.
    c127 = torch.full_like(safe, 127.0)
    scale = torch.where(nonzero, safe / c127, torch.ones_like(absmax))
    inv = torch.where(nonzero, c127 / safe, torch.zeros_like(absmax))
    q = torch.clamp(torch.round(xf * inv), -127.0, 127.0).to(torch.int8)
    return q, scale.squeeze(-1)


def dequantize_per_token_ref(q: torch.Tensor, scale: torch.Tensor,
                             out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_per_token_ref`: ``(q * scale[..., None]).to(out_dtype)``."""
    return (q.float() * scale.float().unsqueeze(-1)).to(out_dtype)


def apply_activation_ref(y: torch.Tensor, activation: str) -> torch.Tensor:
    """Epilogue activation shared by the GEMM references."""
    if activation == "none":
        return y
    if activation == "gelu":
        return F.gelu(y)
    if activation == "silu":
        return F.silu(y)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def w8a8_linear_ref(qx: torch.Tensor, x_scale: torch.Tensor, qw: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None = None, activation: str = "none",
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer-exact W8A8 linear: ``qx (..., K)`` int8, ``qw (N, K)`` int8, scales fp32.

    The int32 accumulation is computed in float64, which is exact for ``K < 2**38 / 127**2``.
    """
    acc = (qx.reshape(-1, qx.shape[-1]).double() @ qw.double().T).float()  # (M, N), exact ints
    y = acc * x_scale.reshape(-1, 1).float() * w_scale.reshape(1, -1).float()
    if bias is not None:
        y = y + bias.float()
    y = apply_activation_ref(y, activation)
    return y.to(out_dtype).reshape(*qx.shape[:-1], qw.shape[0])


def quantize_weight_int4_ref(w: torch.Tensor, group_size: int = 64,
                             scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-wise symmetric int4 quantization of ``w (N, K)``.

    Returns
    -------
    q : torch.Tensor
        int8 holding values in ``[-8, 7]``, shape ``(N, K)`` (unpacked; see :func:`pack_int4`).
    scales : torch.Tensor
        ``scale_dtype``, shape ``(N, ceil(K / group_size))``. ``q`` is computed from the
        scales *after* rounding to ``scale_dtype``, so ``q * scales`` is the exact dequant.
    """
    n, k = w.shape
    groups = -(-k // group_size)
    wf = torch.zeros(n, groups * group_size, dtype=torch.float32, device=w.device)
    wf[:, :k] = w.float()
    wg = wf.view(n, groups, group_size)  # (N, G, group_size)
    absmax = wg.abs().amax(dim=-1)
    scales = torch.where(absmax > 0, absmax / 7.0, torch.ones_like(absmax)).to(scale_dtype)
    q = torch.clamp(torch.round(wg / scales.float().unsqueeze(-1)), -8, 7).to(torch.int8)
    return q.view(n, -1)[:, :k].contiguous(), scales


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values ``q (N, K)`` (int8 in ``[-8, 7]``) into ``(N, ceil(K / 2))`` uint8."""
    if q.min() < -8 or q.max() > 7:
        raise ValueError("int4 values must lie in [-8, 7]")
    n, k = q.shape
    if k % 2:
        q = torch.cat([q, q.new_zeros(n, 1)], dim=1)
    nib = (q.to(torch.int16) & 0xF).to(torch.uint8).view(n, -1, 2)  # (N, K/2, 2)
    return (nib[..., 0] | (nib[..., 1] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(N, ceil(K / 2))`` uint8 to ``(N, K)`` int8."""
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    nib = torch.stack([lo, hi], dim=-1).view(packed.shape[0], -1)[:, :k]  # (N, K)
    return torch.where(nib >= 8, nib - 16, nib).to(torch.int8)


def dequantize_int4_ref(packed: torch.Tensor, scales: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """Float32 weight ``(N, K)`` from packed int4 and group scales."""
    q = unpack_int4(packed, k).float()
    s = scales.float().repeat_interleave(group_size, dim=1)[:, :k]  # (N, K)
    return q * s


def w4a16_linear_ref(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize-then-matmul reference in float32, returned in ``x.dtype``."""
    k = x.shape[-1]
    y = x.reshape(-1, k).float() @ dequantize_int4_ref(packed, scales, k, group_size).T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], packed.shape[0])


def quantize_weight_int6_ref(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int6 quantization of ``w (N, K)``, one float32 scale per output channel.

    Returns ``(q int8 (N, K) in [-32, 31], scale float32 (N,))``; ``w ~ q * scale[:, None]``.
    """
    wf = w.float()
    absmax = wf.abs().amax(dim=1, keepdim=True)
    nonzero = absmax > 0
    safe = torch.where(nonzero, absmax, torch.ones_like(absmax))
    scale = torch.where(nonzero, safe / torch.full_like(safe, 31.0), torch.ones_like(absmax))
    q = torch.clamp(torch.round(wf / scale), -32.0, 31.0).to(torch.int8)
    return q, scale.squeeze(1)


def pack_int6(q: torch.Tensor) -> torch.Tensor:
    """Pack int6 values ``q (N, K)`` (int8 in ``[-32, 31]``) into ``(N, 3 * ceil(K / 4))`` uint8."""
    if q.numel() and (q.min() < -32 or q.max() > 31):
        raise ValueError("int6 values must lie in [-32, 31]")
    n, k = q.shape
    pad = -k % 4
    if pad:
        q = torch.cat([q, q.new_zeros(n, pad)], dim=1)
    f = (q.to(torch.int32) & 0x3F).view(n, -1, 4)  # (N, K/4, 4) unsigned 6-bit fields
    word = f[..., 0] | (f[..., 1] << 6) | (f[..., 2] << 12) | (f[..., 3] << 18)  # (N, K/4) 24-bit words
    out = torch.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF], dim=-1)  # (N, K/4, 3)
    return out.to(torch.uint8).view(n, -1).contiguous()


def unpack_int6(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int6`: ``(N, 3 * ceil(K / 4))`` uint8 to ``(N, K)`` int8."""
    n = packed.shape[0]
    b = packed.to(torch.int32).view(n, -1, 3)  # (N, K/4, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)  # (N, K/4)
    f = torch.stack([(word >> (6 * i)) & 0x3F for i in range(4)], dim=-1).view(n, -1)[:, :k]  # (N, K)
    return torch.where(f >= 32, f - 64, f).to(torch.int8)


def w6a8_linear_ref(qx: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None = None, activation: str = "none",
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer-exact W6A8 linear: :func:`w8a8_linear_ref` on the unpacked int6 weight."""
    qw = unpack_int6(packed, qx.shape[-1])
    return w8a8_linear_ref(qx, x_scale, qw, w_scale, bias, activation, out_dtype)


ADALOG_R = 37  # AdaLog's denominator: base a = 2**(q / r), integer q (Wu et al. 2024)


def adalog_tables(bits: int, q: int, scale: float, shift: float = 0.0,
                  r: int = ADALOG_R) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold and level vectors of an AdaLog quantizer (see the module docstring).

    Parameters
    ----------
    bits : int
        Code width, 2 to 8; ``2**bits - 1`` levels plus the zero code.
    q, r : int
        Base ``a = 2**(q / r)``; ``q = r`` is the plain log2 quantizer.
    scale : float
        Largest level ``s`` (values above it get code 0).
    shift : float
        ``beta`` added before the log (post-GELU/ASH tensors reach ``-0.17``).

    Returns
    -------
    thresholds : torch.Tensor
        float32 ``(2**bits - 1,)``, non-increasing (levels far below ``s`` may underflow
        to ``-beta`` in float32, which only makes their codes unused).
    levels : torch.Tensor
        float32 ``(2**bits,)``.
    """
    if not 2 <= bits <= 8 or q < 1 or r < 1 or not scale > 0:
        raise ValueError(f"need 2 <= bits <= 8, q >= 1, r >= 1, scale > 0; got {bits}, {q}, {r}, {scale}")
    n = 2**bits - 1
    i = torch.arange(n, dtype=torch.float64, device="cpu")  # tables are built on CPU, even under a meta device
    tau = q / r  # log2 of the base
    levels = torch.cat([scale * torch.exp2(-tau * i), torch.zeros(1, dtype=torch.float64, device="cpu")]) - shift
    thresholds = scale * torch.exp2(-tau * (i + 0.5)) - shift
    return _strict_tables(thresholds, levels)


def uniform_tables(bits: int, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The uniform (affine) per-tensor quantizer on ``[lo, hi]`` as a table quantizer.

    ``2**bits`` levels evenly spaced from ``hi`` down to ``lo`` (descending, so that code 0
    is the largest value as for AdaLog), thresholds at the midpoints.
    """
    if not 2 <= bits <= 8 or not hi > lo:
        raise ValueError(f"need 2 <= bits <= 8 and hi > lo; got {bits}, {lo}, {hi}")
    n = 2**bits
    levels = hi - (hi - lo) * torch.arange(n, dtype=torch.float64, device="cpu") / (n - 1)
    return _strict_tables((levels[:-1] + levels[1:]) / 2, levels)


def _strict_tables(thresholds: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, v = thresholds.float(), levels.float()
    if t.numel() > 1 and not bool((t[1:] <= t[:-1]).all()):
        raise ValueError("quantizer thresholds must be non-increasing")
    return t.contiguous(), v.contiguous()


def table_quantize_ref(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Codes ``#{k : x < t_k}`` (uint8, shape of ``x``) for descending ``thresholds``."""
    asc = thresholds.float().flip(0).contiguous()
    below_or_equal = torch.searchsorted(asc, x.float().contiguous(), right=True)  # #{k : t_k <= x}
    return (thresholds.numel() - below_or_equal).to(torch.uint8)


def table_dequantize_ref(codes: torch.Tensor, levels: torch.Tensor,
                         out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``levels[codes]`` in ``out_dtype``."""
    return levels.float()[codes.long()].to(out_dtype)


def ash_ref(x: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """ASH activation in plain torch (autograd provides the reference gradients)."""
    xf = x.float()
    mu = xf.mean(dim=-1, keepdim=True)
    sigma = torch.sqrt(xf.var(dim=-1, unbiased=False, keepdim=True) + eps)
    return (xf * torch.sigmoid(alpha * (xf - mu - z * sigma))).to(x.dtype)


def sqnr_db(signal: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum(s^2) / sum((s - a)^2))`` in dB."""
    s = signal.double()
    noise = (s - approx.double()).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(s.pow(2).sum() / noise))
