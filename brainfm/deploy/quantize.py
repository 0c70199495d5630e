"""Post-training quantization of a :class:`~brainfm.models.BrainDecoder`: swap its linears.

:func:`quantize` copies the decoder and replaces every ``nn.Linear`` of the encoder (patch
projections, sensor MLP, criss-cross QKV/output projections, feed-forward) and of the head
by a :class:`~brainfm.deploy.qlinear.W8A8Linear`, :class:`~brainfm.deploy.qlinear.W4A16Linear`
or :class:`~brainfm.deploy.qlinear.W6A8Linear`. Convolutions, norms, embeddings, the rFFT
spectral branch, attention (SDPA) and the subject layers stay in float.

Layers kept in float (``min_features``, default 8): a linear with fewer than 8 inputs or
outputs, i.e. the sensor MLP's first layer (6 geometry inputs) and the classification
layer (``n_classes`` outputs). Their GEMMs are too small to gain anything, and they sit at
the two ends of the network where every rounding error reaches the logits; on EEGMAT with
the ``tiny`` model, quantizing them too costs SQNR for no speed (see
``docs/benchmarks.md``). ``exclude`` keeps more layers in float by name.

``w6a8`` (FlexQ-style int6 weights, int8 activations) works as ``w8a8``. ``auto`` picks
``w4a16``, ``w6a8`` or ``w8a8`` per layer from a layer-wise sensitivity analysis under a
mean weight-bit ``budget`` (:mod:`brainfm.deploy.sensitivity`); the choice and the
measured sensitivities go into the bundle's config.

``attn_quant`` / ``act_quant`` (``'adalog'`` or ``'uniform'``) also quantize the attention
probabilities of both criss-cross branches and the FFN's hidden activation, per tensor,
with quantizers searched on the calibration windows (:mod:`brainfm.deploy.adalog`).

W8A8 and W6A8 with GELU or SiLU feed-forwards also fuse the activation into the first FFN linear's
GEMM epilogue (``fuse_activation``), replacing the activation module by ``nn.Identity``.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from typing import Any, Iterable

from torch import nn

from brainfm.deploy.adalog import apply_activation_quant, collect_tensors
from brainfm.deploy.calibrate import LinearStats, calibrate
from brainfm.deploy.qlinear import GROUP_SIZES, SCHEMES, QuantLinear, W4A16Linear, W6A8Linear, W8A8Linear
from brainfm.deploy.sensitivity import choose_precisions, layer_sensitivity, logits_sensitivity, mean_bits
from brainfm.deploy.smooth import awq_multiplier, output_error, search_multiplier, smoothquant_multiplier
from brainfm.kernels.reference import sqnr_db


def quantizable_linears(model: nn.Module, min_features: int = 8,
                        exclude: Iterable[str] = ()) -> tuple[list[str], dict[str, str]]:
    """Names of the ``nn.Linear`` layers to quantize, and the others with the reason.

    ``exclude`` holds ``fnmatch`` patterns of module names (e.g. ``"head.*"``).
    """
    patterns = list(exclude)
    chosen, kept = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            kept[name] = "excluded by pattern"
        elif min(module.in_features, module.out_features) < min_features:
            kept[name] = f"{module.in_features}->{module.out_features} has fewer than {min_features} features"
        else:
            chosen.append(name)
    return chosen, kept


def _fusable_activation(model: nn.Module, name: str) -> tuple[str, str] | None:
    """``(activation module name, 'gelu'|'silu')`` if the activation right after linear ``name`` can fuse."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    act_attr = None
    if attr == "linear1" and hasattr(parent, "activation") and hasattr(parent, "linear2"):  # attention.FeedForward
        act_attr = "activation"
    elif isinstance(parent, nn.Sequential) and attr.isdigit() and int(attr) + 1 < len(parent):
        act_attr = str(int(attr) + 1)
    if act_attr is None:
        return None
    act = getattr(parent, act_attr)
    kind = None
    if type(act) is nn.GELU and act.approximate == "none":
        kind = "gelu"
    elif type(act) is nn.SiLU:
        kind = "silu"
    return None if kind is None else (f"{parent_name}.{act_attr}" if parent_name else act_attr, kind)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) of ``model`` by ``module``."""
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def quantize(decoder: nn.Module, scheme: str, calib_batches: Iterable[dict[str, Any]] | None = None, *,
             smoothquant: bool | None = None, alpha: float | str | None = None, group_size: int = 64,
             n_windows: int = 256, min_features: int = 8, exclude: Iterable[str] = (),
             fuse_activation: bool = True, stats: dict[str, LinearStats] | None = None,
             progress: bool = False, budget: float | None = None, attn_quant: str | None = None,
             attn_bits: int = 4, act_quant: str | None = None, act_bits: int = 8,
             sensitivity_metric: str = "logits") -> nn.Module:
    """A quantized copy of ``decoder`` (the input is left untouched).

    Parameters
    ----------
    decoder : BrainDecoder
    scheme : {'w8a8', 'w4a16', 'w6a8', 'auto'}
        See :mod:`brainfm.deploy.qlinear`; ``auto`` mixes them under ``budget``.
    calib_batches : iterable of dict, optional
        Real windows (:func:`brainfm.data.calibration_batches`); needed for the
        activation-aware scaling, not for plain round-to-nearest.
    smoothquant : bool, optional
        Per-input-channel scaling from calibration: SmoothQuant migration for ``w8a8``,
        AWQ-style scaling for ``w4a16`` (:mod:`brainfm.deploy.smooth`). Default: on for
        ``w8a8`` and ``w6a8`` (and the A8 layers of ``auto``), off for ``w4a16``. On a
        fine-tuned EEGMAT decoder the per-layer AWQ search lowered every layer's own error
        yet cost 3.6 points of balanced accuracy end to end (logits SQNR 24.5 -> 17.8 dB),
        where plain round-to-nearest lost 0.1
        (``docs/benchmarks.md``); on the test decoder it helped. RTN is the safe default.
    alpha : float or 'auto', optional
        Migration strength; ``'auto'`` grid-searches it per layer on calibration rows.
        Default: 0.5 for ``w8a8``, ``w6a8`` and ``auto`` (SmoothQuant's default), ``'auto'`` for
        ``w4a16`` (AWQ).
    group_size : int
        ``w4a16`` input features per scale (also ``auto``'s W4A16 layers).
    n_windows : int
        Calibration windows.
    min_features, exclude
        Which linears stay in float (:func:`quantizable_linears`).
    fuse_activation : bool
        ``w8a8``: fuse a GELU/SiLU that follows a linear into its GEMM.
    stats : dict, optional
        Precomputed :func:`~brainfm.deploy.calibrate.calibrate` output (skips calibration).
    budget : float, optional
        ``auto``: mean weight bits over the quantized layers, in ``[4, 8]``.
    sensitivity_metric : {'logits', 'layer'}
        ``auto``: rank layers by the decoder's output error with that layer alone quantized
        (default) or by the layer's own output error (:mod:`brainfm.deploy.sensitivity`).
    attn_quant, act_quant : {'adalog', 'uniform'}, optional
        Quantize the attention probabilities / the FFN's hidden activation (needs
        ``calib_batches``) at ``attn_bits`` / ``act_bits``.

    Returns
    -------
    nn.Module
        The decoder, in eval mode, with quantized linears. Its ``deploy_config`` attribute
        (a JSON-ready dict) describes the quantization; :func:`brainfm.deploy.save_bundle`
        writes it.
    """
    if scheme not in SCHEMES + ("auto",):
        raise ValueError(f"scheme must be one of {SCHEMES + ('auto',)}, got {scheme!r}")
    if scheme == "auto" and budget is None:
        raise ValueError("scheme 'auto' needs a budget (mean weight bits, 4 to 8)")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")
    if smoothquant is None:  # auto: SmoothQuant on its A8 layers only
        smoothquant = scheme in ("w8a8", "w6a8", "auto")
    if alpha is None:
        alpha = "auto" if scheme == "w4a16" else 0.5
    if alpha != "auto" and not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1] or 'auto', got {alpha!r}")
    if (attn_quant or act_quant) and calib_batches is None:
        raise ValueError("attn_quant / act_quant need calibration windows (calib_batches)")
    names, kept = quantizable_linears(decoder, min_features, exclude)
    if (smoothquant or scheme == "auto") and stats is None:
        if calib_batches is None:
            raise ValueError(f"{'smoothquant' if smoothquant else 'the auto scheme'} needs calibration windows "
                             "(calib_batches) or stats")
        stats = calibrate(decoder, calib_batches, n_windows, progress=progress)
    sensitivity, kinds = None, {name: scheme for name in names}
    if scheme == "auto":
        if sensitivity_metric == "layer":
            sensitivity = layer_sensitivity(decoder, names, stats, group_size)
        elif sensitivity_metric == "logits":
            if calib_batches is None:
                raise ValueError("sensitivity_metric='logits' needs calibration windows (calib_batches)")

            def make(linear: nn.Linear, name: str, kind: str) -> nn.Module:
                return _quant_layer(linear, kind, stats.get(name), smoothquant and kind != "w4a16", alpha,
                                    group_size, "none")[0]

            sensitivity = logits_sensitivity(decoder, names, make, calib_batches, n_windows)
        else:
            raise ValueError(f"sensitivity_metric must be 'logits' or 'layer', got {sensitivity_metric!r}")
        kinds = choose_precisions(sensitivity, float(budget))
    model = copy.deepcopy(decoder).eval()
    layers: dict[str, dict] = {}
    report: dict[str, dict] = {}
    fused: list[str] = []
    for name in names:
        kind = kinds[name]
        linear = model.get_submodule(name)
        st = (stats or {}).get(name)
        act = _fusable_activation(model, name) if kind != "w4a16" and fuse_activation else None
        smooth = smoothquant and (kind != "w4a16" or scheme == "w4a16")  # auto: none on its W4A16 layers
        q, multiplier, used_alpha = _quant_layer(linear, kind, st, smooth, alpha, group_size, act[1] if act else "none")
        w_hat = q.dequantized_weight() * (1.0 if multiplier is None else multiplier[None, :])  # undo 1 / m
        entry = {"weight_sqnr_db": _finite(sqnr_db(linear.weight.detach().float(), w_hat)), "alpha": used_alpha}
        if st is not None and len(st.rows):
            err = output_error(st.rows, linear.weight, multiplier, kind, group_size)
            entry["calib_output_sqnr_db"] = _finite(-10 * math.log10(err) if err > 0 else float("inf"))
        set_module(model, name, q)
        if act is not None:
            set_module(model, act[0], nn.Identity())
            fused.append(act[0])
        layers[name] = q.spec()
        report[name] = entry
    config = {
        "scheme": scheme,
        "group_size": group_size if "w4a16" in kinds.values() else None,
        "smoothquant": bool(smoothquant),
        "alpha": alpha if smoothquant else None,
        "layers": layers,
        "float_layers": kept,
        "fused_activations": fused,
        "calibration": {"windows": next(iter(stats.values())).n_windows if stats else 0},
        "report": report,
    }
    if scheme == "auto":
        config["auto"] = {"budget_bits": float(budget), "mean_bits": round(mean_bits(kinds, sensitivity), 4),
                          "metric": sensitivity_metric,
                          "sensitivity": {n: {k: (v if k == "weights" else _finite(-10 * math.log10(max(v, 1e-30))))
                                              for k, v in s.items()} for n, s in sensitivity.items()}}
    if attn_quant or act_quant:
        sites = collect_tensors(model, calib_batches, n_windows)
        config.update(apply_activation_quant(model, sites, attn=attn_quant, attn_bits=attn_bits, act=act_quant,
                                             act_bits=act_bits))
    model.deploy_config = config
    return model


def _quant_layer(linear: nn.Linear, kind: str, st: LinearStats | None, smooth: bool, alpha: float | str,
                 group_size: int, activation: str) -> tuple[QuantLinear, object, float | None]:
    """``(quantized layer, smoothing multiplier or None, alpha used)`` for one linear."""
    multiplier, used_alpha = None, None
    if smooth and st is not None:
        if alpha == "auto":
            multiplier, used_alpha = search_multiplier(st.rows, st.absmax, st.mean_abs, linear.weight, kind, group_size)
        elif kind != "w4a16":
            multiplier, used_alpha = smoothquant_multiplier(st.absmax, linear.weight, float(alpha)), float(alpha)
        else:
            multiplier, used_alpha = awq_multiplier(st.mean_abs, float(alpha)), float(alpha)
    if kind == "w8a8":
        q: QuantLinear = W8A8Linear.from_float(linear, multiplier, activation=activation)
    elif kind == "w6a8":
        q = W6A8Linear.from_float(linear, multiplier, activation=activation)
    else:
        q = W4A16Linear.from_float(linear, multiplier, group_size=group_size)
    return q, multiplier, used_alpha


def _finite(v: float) -> float | None:
    """JSON has no infinity: an exact layer reports None."""
    return None if v == float("inf") else round(float(v), 3)
