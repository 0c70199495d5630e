"""AdaLog for the attention probabilities and the feed-forward's hidden activations.

AdaLog (Wu et al., ECCV 2024 [1]_) quantizes post-softmax and post-GELU tensors on a
logarithmic grid whose base ``a = 2**(q / 37)`` is searched per tensor, with a shift
(bias reparameterisation) for the negative tail of GELU. This module carries it into a
:class:`~brainfm.models.BrainDecoder`:

:class:`TableQuantizer`
    A per-tensor quantize-dequantize (``adalog`` or the ``uniform`` baseline) that runs the
    :func:`brainfm.kernels.adalog_quantize` / :func:`~brainfm.kernels.adalog_dequantize`
    ops; its thresholds and levels are buffers, so a bundle stores them.
:class:`QuantAttentionBlock`
    The criss-cross block with an *explicit* softmax, so that the probabilities of both
    branches (spatial over channels, temporal over patches) pass through a quantizer before
    they multiply V. ``brainfm.models.attention`` keeps its fused SDPA; a block is switched
    to this subclass in place (:func:`attach_attention_quant`) when a model is quantized or a
    bundle is loaded, and its reshapes are the parent's, line for line.
:class:`QuantActivation`
    The FFN's activation (GELU, SiLU, ASH, or the identity left when W8A8 fused GELU into
    the GEMM) followed by a quantizer.
:func:`search_adalog` / :func:`search_uniform`
    The per-tensor search on calibration windows. AdaLog's Fast Progressive Combining
    Search (FPCS): a coarse grid of (base, scale) candidates, then ``steps`` rounds that keep
    the ``width`` best and combine each with finer neighbours (scale steps halve each round,
    base steps shrink to one). The objective is the error *after the next matmul*, as in the
    paper: ``|(P_q - P) V|^2`` for attention probabilities and ``|(H_q - H) W_2^T|^2`` for the
    hidden activations. The uniform baseline gets the same search over its clipping range, so
    comparisons at one bit width are like for like.

Zero code. AdaLog's own quantizer zeroes values that round past the last level with a mask;
here the top code stands for zero (``2**bits - 1`` log levels plus zero), so that masked keys
of a mixed-montage batch stay exactly zero in a real integer pipeline.

References
----------
.. [1] Z. Wu, J. Chen, H. Zhong, D. Huang, Y. Wang, "AdaLog: Post-Training Quantization
   for Vision Transformers with Adaptive Logarithm Quantizer", ECCV 2024, arXiv:2407.12951.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from brainfm.deploy.calibrate import decoder_inputs
from brainfm.kernels import adalog_dequantize, adalog_quantize
from brainfm.kernels.reference import (ADALOG_R, adalog_tables, table_dequantize_ref, table_quantize_ref,
                                       uniform_tables)
from brainfm.models.attention import CrissCrossBlock, FeedForward

QUANTIZER_KINDS = ("adalog", "uniform")
BITS = (2, 3, 4, 5, 6, 7, 8)


class TableQuantizer(nn.Module):
    """Per-tensor AdaLog or uniform quantize-dequantize (a JSON spec plus two buffers).

    Parameters
    ----------
    kind : {'adalog', 'uniform'}
    bits : int
    q : int
        AdaLog base numerator (base ``2**(q / 37)``).
    scale, shift : float
        AdaLog's largest level and its reparameterised bias.
    lo, hi : float
        The uniform quantizer's range.
    """

    def __init__(self, kind: str, bits: int, q: int = ADALOG_R, scale: float = 1.0, shift: float = 0.0,
                 lo: float = 0.0, hi: float = 1.0) -> None:
        super().__init__()
        if kind not in QUANTIZER_KINDS:
            raise ValueError(f"quantizer kind must be one of {QUANTIZER_KINDS}, got {kind!r}")
        self.kind, self.bits = kind, int(bits)
        if kind == "adalog":
            self.params = {"q": int(q), "scale": float(scale), "shift": float(shift)}
            t, v = adalog_tables(self.bits, int(q), float(scale), float(shift))
        else:
            self.params = {"lo": float(lo), "hi": float(hi)}
            t, v = uniform_tables(self.bits, float(lo), float(hi))
        self.register_buffer("thresholds", t)
        self.register_buffer("levels", v)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "TableQuantizer":
        return cls(spec["kind"], spec["bits"], **{k: v for k, v in spec.items() if k not in ("kind", "bits")})

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, **self.params}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adalog_dequantize(adalog_quantize(x, self.thresholds), self.levels, x.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec().items())


def check_quantizer_spec(where: str, spec: Any) -> None:
    """Raise ``ValueError`` unless ``spec`` is a valid :meth:`TableQuantizer.spec`."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"invalid bundle config: {where}: {msg}")

    need(isinstance(spec, dict), "quantizer is not an object")
    need(spec.get("kind") in QUANTIZER_KINDS, f"kind must be one of {QUANTIZER_KINDS}")
    need(spec.get("bits") in BITS, f"bits must be one of {BITS}")
    names = {"q", "scale", "shift"} if spec["kind"] == "adalog" else {"lo", "hi"}
    need(set(spec) == names | {"kind", "bits"}, f"fields must be {sorted(names | {'kind', 'bits'})}")
    for k in names:
        need(isinstance(spec[k], (int, float)) and not isinstance(spec[k], bool) and math.isfinite(spec[k]),
             f"{k} must be a finite number")
    if spec["kind"] == "adalog":
        need(isinstance(spec["q"], int) and 1 <= spec["q"] <= 8 * ADALOG_R and spec["scale"] > 0,
             "q must be an int in [1, 296] and scale > 0")
    else:
        need(spec["hi"] > spec["lo"], "hi must exceed lo")


class QuantActivation(nn.Module):
    """``quantizer(activation(x))``: the FFN's hidden activation, quantized per tensor."""

    def __init__(self, activation: nn.Module, quantizer: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.activation(x))


class QuantAttentionBlock(CrissCrossBlock):
    """:class:`~brainfm.models.attention.CrissCrossBlock` with an explicit, quantized softmax.

    Never constructed directly: :func:`attach_attention_quant` switches a built block to this
    class and adds ``p_quant_s`` and ``p_quant_t`` (the spatial and temporal probability
    quantizers; ``nn.Identity`` computes the float attention). ``taps``, when a list, receives
    ``(branch, probabilities, values)`` of every call (calibration).
    """

    p_quant_s: nn.Module
    p_quant_t: nn.Module
    taps: list | None = None

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  quantizer: nn.Module, branch: str) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (..., Lq, Lk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        p = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        if self.taps is not None:
            self.taps.append((branch, p.detach(), v.detach()))
        return quantizer(p) @ v  # (..., Lq, hd)

    def attention(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`CrissCrossBlock.attention`, with softmax(QK^T / sqrt(d)) quantized before V."""
        b, c, s, d = x.shape
        h, hd = self.n_half, self.head_dim
        if self.split:
            half = d // 2
            qkv_s = self.qkv_s(x[..., :half])  # (B, C, S, h*3*hd)
            qkv_t = self.qkv_t(x[..., half:])  # (B, C, S, h*3*hd)
        else:
            qkv_s, qkv_t = self.qkv(x).view(b, c, s, 2, 3 * h * hd).unbind(3)  # 2 x (B,C,S,3D/2)
        qkv_s = qkv_s.reshape(b, c, s * h, 3, hd).transpose(1, 2)  # (B, S*h, C, 3, hd)
        out_s = self._explicit(qkv_s[..., 0, :], qkv_s[..., 1, :], qkv_s[..., 2, :], key_mask, self.p_quant_s,
                               "spatial")
        out_s = out_s.transpose(1, 2).reshape(b, c, s, h * hd)  # (B, S*h, C, hd) -> (B, C, S, D/2)
        qkv_t = qkv_t.reshape(b * c, s, h, 3, hd).transpose(1, 2)  # (B*C, h, S, 3, hd)
        out_t = self._explicit(qkv_t[..., 0, :], qkv_t[..., 1, :], qkv_t[..., 2, :], None, self.p_quant_t,
                               "temporal")
        out_t = out_t.transpose(1, 2).reshape(b, c, s, h * hd)  # (B*C, h, S, hd) -> (B, C, S, D/2)
        if self.split:
            return torch.cat([self.out_s(out_s), self.out_t(out_t)], dim=-1)  # (B, C, S, D)
        return self.out(torch.cat([out_s, out_t], dim=-1))  # (B, C, S, D)


def attach_attention_quant(block: CrissCrossBlock, spatial: nn.Module | None = None,
                           temporal: nn.Module | None = None) -> QuantAttentionBlock:
    """Switch ``block`` in place to :class:`QuantAttentionBlock` with these quantizers."""
    if not isinstance(block, CrissCrossBlock):
        raise TypeError(f"expected a CrissCrossBlock, got {type(block).__name__}")
    block.__class__ = QuantAttentionBlock
    block.p_quant_s = spatial if spatial is not None else nn.Identity()
    block.p_quant_t = temporal if temporal is not None else nn.Identity()
    return block


def criss_cross_blocks(model: nn.Module) -> list[tuple[str, CrissCrossBlock]]:
    """``(name, block)`` of every criss-cross block of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CrissCrossBlock)]


# --- calibration and search --------------------------------------------------------------------

_SAMPLE = 4096  # rows (attention query rows, hidden-activation tokens) kept per tensor


@torch.inference_mode()
def collect_tensors(model: nn.Module, batches: Iterable[dict[str, Any]], n_windows: int,
                    seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Float tensors AdaLog is searched on, sampled from ``n_windows`` windows.

    Returns, per site, ``{"x": rows, "m": matrix}`` such that the objective is
    ``|(x_q - x) m|^2``: ``{block}.spatial`` / ``{block}.temporal`` hold probability rows
    ``(R, L)`` with the values ``(R, L, hd)`` of their sequence, and ``{block}.ff`` holds
    hidden-activation rows ``(R, F)`` with ``m = W_2^T`` ``(F, D)``.
    """
    model = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    raw: dict[str, list] = {}
    hooks = []
    for name, block in criss_cross_blocks(model):
        attach_attention_quant(block)
        block.taps = []
        raw[f"{name}.ff"] = []
        hooks.append(block.ff.activation.register_forward_hook(
            lambda mod, args, out, key=f"{name}.ff": raw[key].append(out.detach().reshape(-1, out.shape[-1]))))
    seen = 0
    for batch in batches:
        take = min(len(batch["x"]), n_windows - seen)
        model(*[t[:take] for t in decoder_inputs(batch)])
        seen += take
        if seen >= n_windows:
            break
    for h in hooks:
        h.remove()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, block in criss_cross_blocks(model):
        for branch in ("spatial", "temporal"):
            ps, vs = [], []
            for br, p, v in block.taps:
                if br != branch:
                    continue
                length = p.shape[-1]
                ps.append(p.reshape(-1, length))  # (N*Lq, Lk)
                vs.append(v.unsqueeze(-3).expand(*p.shape[:-1], *v.shape[-2:]).reshape(-1, length, v.shape[-1]))
            if not ps:
                continue
            lengths = {p.shape[-1] for p in ps}
            ps = [p for p in ps if p.shape[-1] == max(lengths)]  # one sequence length per site
            vs = [v for v in vs if v.shape[-2] == max(lengths)]
            p, v = torch.cat(ps), torch.cat(vs)
            pick = torch.randperm(len(p), generator=gen)[:_SAMPLE]
            out[f"{name}.{branch}"] = {"x": p[pick], "m": v[pick]}
        h = torch.cat(raw[f"{name}.ff"])
        pick = torch.randperm(len(h), generator=gen)[:_SAMPLE]
        out[f"{name}.ff"] = {"x": h[pick], "m": _ff_down_weight(block.ff)}
        block.taps = None
    return out


def _ff_down_weight(ff: FeedForward) -> torch.Tensor:
    lin = ff.linear2
    w = lin.dequantized_weight() if hasattr(lin, "dequantized_weight") else lin.weight.detach()
    return w.float().T  # (F, D)


def site_error(x: torch.Tensor, m: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``|(x_hat - x) m|^2`` with ``m`` a matrix ``(F, D)`` or per-row values ``(R, L, hd)``."""
    diff = (x_hat - x).float()
    if m.dim() == 2:
        return float((diff @ m).pow(2).sum())
    return float((diff.unsqueeze(-2) @ m.float()).pow(2).sum())


def _error_of(t_v: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, m: torch.Tensor) -> float:
    t, v = t_v
    return site_error(x, m, table_dequantize_ref(table_quantize_ref(x, t), v))


def _fpcs(evaluate: Callable[[tuple], float], coarse: list[tuple], refine: Callable[[tuple, int], list[tuple]],
          steps: int, width: int) -> tuple[tuple, float]:
    """Fast Progressive Combining Search over hashable candidates: keep ``width``, refine, repeat."""
    scored = {c: evaluate(c) for c in coarse}
    for step in range(1, steps):
        top = sorted(scored, key=scored.get)[:width]
        for c in top:
            for n in refine(c, step):
                if n not in scored:
                    scored[n] = evaluate(n)
    best = min(scored, key=scored.get)
    return best, scored[best]


def search_adalog(x: torch.Tensor, m: torch.Tensor, bits: int, shift: float | None = None,
                  steps: int = 4, width: int = 4) -> TableQuantizer:
    """AdaLog quantizer for the rows ``x`` (objective :func:`site_error` with ``m``), FPCS-searched.

    ``shift`` defaults to ``max(0, -min(x))`` (the bias reparameterisation of post-GELU tensors;
    0 for probabilities).
    """
    x = x.float()
    shift = max(0.0, -float(x.min())) if shift is None else float(shift)
    top = float((x + shift).max())
    if not top > 0:
        top = 1.0
    # the largest level never sits below the calibration maximum: clipping the few largest
    # probabilities cost little on calibration windows but 15-20 dB on held-out ones
    scales = sorted({round(top * f, 9) for f in (1.0, 1.1, 1.25, 1.5)})
    qs = list(range(4, 4 * ADALOG_R // 2 + 1, 4))  # base 2**(4/37) .. 2**(72/37), just under 4

    def evaluate(c: tuple) -> float:
        q, s = c
        try:
            return _error_of(adalog_tables(bits, q, s, shift), x, m)
        except ValueError:
            return float("inf")

    def refine(c: tuple, step: int) -> list[tuple]:
        q, s = c
        dq = max(1, 4 >> step)
        ds = 0.1 / 2**step
        return [(q2, round(s * f, 9)) for q2 in (q - dq, q, q + dq) if q2 >= 1 for f in (1 - ds, 1.0, 1 + ds)
                if s * f >= top]

    (q, s), _ = _fpcs(evaluate, [(q, s) for q in qs for s in scales], refine, steps, width)
    return TableQuantizer("adalog", bits, q=q, scale=s, shift=shift)


def search_uniform(x: torch.Tensor, m: torch.Tensor, bits: int, steps: int = 4, width: int = 4,
                   keep_zero: bool = True) -> TableQuantizer:
    """Uniform per-tensor quantizer on ``[lo, hi]`` with ``hi`` searched like :func:`search_adalog`.

    ``lo = min(0, min(x))`` by default: real zero stays in range, as an integer pipeline
    needs (masked keys of padded channels are exact zeros; a range that starts above 0
    would hand them its lowest level and leak attention to padding). ``keep_zero=False``
    uses ``lo = min(x)``, tighter on a tensor with no zeros (benchmarks report both).
    """
    x = x.float()
    lo, top = float(x.min()), float(x.max())
    if keep_zero:
        lo = min(lo, 0.0)
    if not top > lo:
        top = lo + 1.0
    span = top - lo

    def evaluate(c: tuple) -> float:
        return _error_of(uniform_tables(bits, lo, lo + span * c[0]), x, m)

    def refine(c: tuple, step: int) -> list[tuple]:
        d = 0.05 / 2**step
        return [(round(c[0] * f, 9),) for f in (1 - d, 1 + d) if c[0] * f <= 1.0]

    coarse = [(f,) for f in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05)]
    (f,), _ = _fpcs(evaluate, coarse, refine, steps, width)
    return TableQuantizer("uniform", bits, lo=lo, hi=lo + span * f)


def search(kind: str, x: torch.Tensor, m: torch.Tensor, bits: int) -> TableQuantizer:
    """:func:`search_adalog`, :func:`search_uniform` or (``uniform-minmax``) the latter with ``keep_zero=False``."""
    if kind == "adalog":
        return search_adalog(x, m, bits)
    if kind in ("uniform", "uniform-minmax"):
        return search_uniform(x, m, bits, keep_zero=kind == "uniform")
    raise ValueError(f"quantizer kind must be one of {QUANTIZER_KINDS}, got {kind!r}")


# --- applying to a model ---------------------------------------------------------------------------

def apply_activation_quant(model: nn.Module, sites: dict[str, dict[str, torch.Tensor]], *,
                           attn: str | None = None, attn_bits: int = 4, act: str | None = None,
                           act_bits: int = 8) -> dict[str, dict]:
    """Search quantizers on ``sites`` (:func:`collect_tensors`) and install them in ``model``.

    Returns ``{"attn_quant": {block: {"spatial": spec, "temporal": spec}}, "act_quant":
    {activation module: spec}}`` for the bundle config.
    """
    attn_specs: dict[str, dict] = {}
    act_specs: dict[str, dict] = {}
    for name, block in criss_cross_blocks(model):
        if attn is not None:
            qs = {br: search(attn, sites[f"{name}.{br}"]["x"], sites[f"{name}.{br}"]["m"], attn_bits)
                  for br in ("spatial", "temporal")}
            attach_attention_quant(block, qs["spatial"], qs["temporal"])
            attn_specs[name] = {br: q.spec() for br, q in qs.items()}
        if act is not None:
            site = sites[f"{name}.ff"]
            quantizer = search(act, site["x"], site["m"], act_bits)
            block.ff.activation = QuantActivation(block.ff.activation, quantizer)
            act_specs[f"{name}.ff.activation"] = quantizer.spec()
    return {"attn_quant": attn_specs, "act_quant": act_specs}


def install_from_config(model: nn.Module, attn_quant: dict[str, Any], act_quant: dict[str, Any]) -> None:
    """Rebuild the quantizers a bundle config lists (weights come from the state dict)."""
    for name, branches in attn_quant.items():
        try:
            block = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"invalid bundle config: no block {name!r} for attn_quant") from None
        if not isinstance(block, CrissCrossBlock) or not isinstance(branches, dict) \
                or set(branches) != {"spatial", "temporal"}:
            raise ValueError(f"invalid bundle config: attn_quant[{name!r}] needs a criss-cross block and "
                             "spatial and temporal quantizers")
        for br, spec in branches.items():
            check_quantizer_spec(f"attn_quant[{name!r}].{br}", spec)
        attach_attention_quant(block, TableQuantizer.from_spec(branches["spatial"]),
                               TableQuantizer.from_spec(branches["temporal"]))
    for name, spec in act_quant.items():
        check_quantizer_spec(f"act_quant[{name!r}]", spec)
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
        except AttributeError:
            parent = None
        if not isinstance(parent, FeedForward) or attr != "activation":
            raise ValueError(f"invalid bundle config: act_quant name {name!r} is not a feed-forward activation")
        parent.activation = QuantActivation(parent.activation, TableQuantizer.from_spec(spec))
