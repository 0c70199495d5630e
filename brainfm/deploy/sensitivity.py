"""Layer-wise sensitivity and mixed precision under a size budget (``--scheme auto --budget BITS``).

FlexQ (2025) [1]_ quantizes weights to INT6 and keeps 8-bit activations in the layers a
layer-wise sensitivity analysis marks. Here the analysis covers the three weight formats
brainfm has kernels for and picks one per linear layer:

1. :func:`layer_sensitivity` measures, on each layer's sampled calibration inputs (the
   ``rows`` of :func:`~brainfm.deploy.calibrate.calibrate`), the relative output error
   ``|Y_q - Y|^2 / |Y|^2`` of the layer alone at ``w4a16``, ``w6a8`` and ``w8a8``, and at
   ``a8`` (float weights, int8 activations: how much of the A8 error is the activations');
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

from torch import nn

from brainfm.deploy.calibrate import LinearStats
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


def choose_precisions(sensitivity: dict[str, dict[str, float]], budget: float) -> dict[str, str]:
    """Per-layer kind under a mean weight-bit ``budget`` (greedy error reduction per bit)."""
    lo, hi = WEIGHT_BITS[LADDER[0]], WEIGHT_BITS[LADDER[-1]]
    if not lo <= budget <= hi:
        raise ValueError(f"budget must be in [{lo}, {hi}] mean weight bits, got {budget}")
    level = {name: 0 for name in sensitivity}
    total = sum(s["weights"] for s in sensitivity.values())
    used = sum(lo * s["weights"] for s in sensitivity.values())
    limit = budget * total + 1e-9
    while True:
        best, best_gain = None, 0.0
        for name, s in sensitivity.items():
            if level[name] + 1 >= len(LADDER):
                continue
            cur, nxt = LADDER[level[name]], LADDER[level[name] + 1]
            extra = (WEIGHT_BITS[nxt] - WEIGHT_BITS[cur]) * s["weights"]
            if used + extra > limit:
                continue
            gain = (s[cur] - s[nxt]) / extra
            if best is None or gain > best_gain:
                best, best_gain = name, gain
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
