"""Layer-wise sensitivity and mixed precision under a size budget (``--scheme auto --budget BITS``).

FlexQ (2025) [1]_ quantizes weights to INT6 and keeps 8-bit activations in the layers a
layer-wise sensitivity analysis marks. Here the analysis covers the three weight formats
brainfm has kernels for and picks one per linear layer:

1. the sensitivity of each layer at ``w4a16``, ``w6a8`` and ``w8a8``, as a relative error
   ``|Y_q - Y|^2 / |Y|^2`` on calibration windows, by one of two metrics:
   :func:`logits_sensitivity` (default) quantizes that layer alone and measures the
   decoder's logits; :func:`layer_sensitivity` measures the layer's own output on its
   sampled inputs (the ``rows`` of :func:`~brainfm.deploy.calibrate.calibrate`), plus ``a8``
   (float weights, int8 activations: how much of the A8 error is the activations'). The
   layer metric is cheaper but blind to how errors propagate: on the EEGMAT decoder of
   ``docs/quantization.md``, upgrading one layer of an all-W4A16 model to W6A8 moved the
   logits SQNR by -5 to +4 dB although every layer's own error fell by 11-15 dB, and
   ``auto`` ranked by the layer metric only matched plain W6A8 at a 6-bit budget (40.8 dB)
   where the logits metric reached 51.0 dB;
2. :func:`choose_precisions` starts every layer at 4 bits and, while the weight budget
   allows, upgrades the layer whose step (4 -> 6 or 6 -> 8 bits) removes the most error per
   added weight bit (the errors are relative, so layers of any scale compare).

The budget is the mean number of weight bits over the quantized layers' weights
(``sum(bits_l * n_l) / sum(n_l)``), so ``--budget 4`` is all W4A16, ``--budget 8`` all W8A8
and anything between mixes them. Scales are not counted; the bundle reports its real size.

References
----------
.. [1] "FlexQ: Efficient Post-training INT6 Quantization for LLM Serving via
   Algorithm-System Co-Design", 2025, arXiv:2508.04405.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from brainfm.deploy.calibrate import LinearStats, decoder_inputs
from brainfm.deploy.qlinear import WEIGHT_BITS
from brainfm.deploy.smooth import output_error

#: Layer kinds the auto scheme chooses from, cheapest first.
LADDER = ("w4a16", "w6a8", "w8a8")


def layer_sensitivity(model: nn.Module, names: list[str], stats: dict[str, LinearStats],
                      group_size: int = 64) -> dict[str, dict[str, float]]:
    """Relative output error of each named linear alone at each precision (see module docstring).

    Returns ``{name: {"w4a16": e, "w6a8": e, "w8a8": e, "a8": e, "weights": n}}``.
    """
    out = {}
    for name in names:
        st = stats.get(name)
        if st is None or not len(st.rows):
            raise ValueError(f"no calibration rows for layer {name!r}: the auto scheme needs calibration windows")
        weight = model.get_submodule(name).weight
        errs = {kind: output_error(st.rows, weight, None, kind, group_size) for kind in (*LADDER, "a8")}
        out[name] = {**errs, "weights": int(weight.numel())}
    return out


@torch.inference_mode()
def logits_sensitivity(model: nn.Module, names: list[str], make: Callable[[nn.Linear, str, str], nn.Module],
                       batches: Iterable[dict[str, Any]], n_windows: int) -> dict[str, dict[str, float]]:
    """Relative error of the decoder's logits with one layer at a time quantized.

    ``make(linear, name, kind)`` builds the quantized layer (as :func:`~brainfm.deploy.quantize`
    would). Unlike :func:`layer_sensitivity` this sees how a layer's error propagates to the
    output. Returns ``{name: {"w4a16": e, "w6a8": e, "w8a8": e, "weights": n}}``.
    """
    inputs, seen = [], 0
    for batch in batches:
        take = min(len(batch["x"]), n_windows - seen)
        inputs.append([t[:take] for t in decoder_inputs(batch)])
        seen += take
        if seen >= n_windows:
            break
    was_training = model.training
    model.eval()
    ref = torch.cat([model(*x) for x in inputs]).float()
    energy = float(ref.pow(2).sum().clamp_min(1e-30))
    out = {}
    try:
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear = getattr(parent, attr)
            errs = {}
            for kind in LADDER:
                setattr(parent, attr, make(linear, name, kind))
                try:
                    got = torch.cat([model(*x) for x in inputs]).float()
                finally:
                    setattr(parent, attr, linear)
                errs[kind] = float((got - ref).pow(2).sum()) / energy
            out[name] = {**errs, "weights": int(linear.weight.numel())}
    finally:
        model.train(was_training)
    return out


def choose_precisions(sensitivity: dict[str, dict[str, float]], budget: float,
                      rule: str = "worst-first") -> dict[str, str]:
    """Per-layer kind under a mean weight-bit ``budget``.

    Every layer starts at 4 bits. ``rule`` picks the next upgrade among those that fit:

    ``worst-first`` (default)
        the layer whose current relative output error is largest, FlexQ's "raise the
        precision of the most sensitive layers" order;
    ``per-bit``
        the upgrade that removes the most error per added weight bit (the greedy knapsack
        for the sum of per-layer errors).
    """
    if rule not in ("worst-first", "per-bit"):
        raise ValueError(f"rule must be 'worst-first' or 'per-bit', got {rule!r}")
    lo, hi = WEIGHT_BITS[LADDER[0]], WEIGHT_BITS[LADDER[-1]]
    if not lo <= budget <= hi:
        raise ValueError(f"budget must be in [{lo}, {hi}] mean weight bits, got {budget}")
    level = {name: 0 for name in sensitivity}
    total = sum(s["weights"] for s in sensitivity.values())
    used = sum(lo * s["weights"] for s in sensitivity.values())
    limit = budget * total + 1e-9
    while True:
        best, best_score = None, 0.0
        for name, s in sensitivity.items():
            if level[name] + 1 >= len(LADDER):
                continue
            cur, nxt = LADDER[level[name]], LADDER[level[name] + 1]
            extra = (WEIGHT_BITS[nxt] - WEIGHT_BITS[cur]) * s["weights"]
            if used + extra > limit:
                continue
            score = s[cur] if rule == "worst-first" else (s[cur] - s[nxt]) / extra
            if best is None or score > best_score:
                best, best_score = name, score
        if best is None:
            break
        s = sensitivity[best]
        used += (WEIGHT_BITS[LADDER[level[best] + 1]] - WEIGHT_BITS[LADDER[level[best]]]) * s["weights"]
        level[best] += 1
    return {name: LADDER[i] for name, i in level.items()}


def mean_bits(choice: dict[str, str], sensitivity: dict[str, dict[str, float]]) -> float:
    """Mean weight bits of a choice (what the budget bounds)."""
    total = sum(s["weights"] for s in sensitivity.values())
    return sum(WEIGHT_BITS[choice[n]] * s["weights"] for n, s in sensitivity.items()) / max(total, 1)
