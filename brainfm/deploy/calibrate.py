"""Calibration: run real windows through a decoder and record what each ``nn.Linear`` sees.

Post-training quantization needs the range of every layer's input. SmoothQuant [1]_ sets
its migration strength from the per-input-channel absolute maximum of the activations, and
AWQ [2]_ searches its scales against a sample of real inputs; both come from one pass of a
few hundred windows with forward pre-hooks on every ``nn.Linear``:

* ``absmax`` ``(K,)``: ``max |x_k|`` over all tokens (SmoothQuant's ``max |X_j|``);
* ``mean_abs`` ``(K,)``: ``mean |x_k|`` (AWQ's activation salience);
* ``rows`` ``(<= max_rows, K)``: a seeded random sample of input rows, for the AWQ search
  and for per-layer error reports.

Tokens of padded channels are zero and change neither statistic. The windows come from
:func:`brainfm.data.calibration_batches`.

References
----------
.. [1] G. Xiao et al., "SmoothQuant", ICML 2023.
.. [2] J. Lin et al., "AWQ: Activation-aware Weight Quantization", MLSys 2024.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class LinearStats:
    """Input statistics of one ``nn.Linear`` over the calibration windows."""

    absmax: torch.Tensor  # (K,)
    abs_sum: torch.Tensor  # (K,) float64
    count: int
    rows: torch.Tensor  # (R, K) sampled inputs
    n_windows: int = 0

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(self.count, 1)).float()


def decoder_inputs(batch: dict[str, Any], device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """``(x, sensor_geometry, sensor_type, channel_mask)`` of a batch from :func:`collate_windows`."""
    return tuple(batch[k].to(device) for k in ("x", "sensor_geometry", "sensor_type", "channel_mask"))


@torch.inference_mode()
def calibrate(model: nn.Module, batches: Iterable[dict[str, Any]], n_windows: int = 256,
              max_rows: int = 512, seed: int = 0, progress: bool = False) -> dict[str, LinearStats]:
    """Collect :class:`LinearStats` for every ``nn.Linear`` of ``model`` (a ``BrainDecoder``).

    Parameters
    ----------
    model : nn.Module
        Called as ``model(x, sensor_geometry, sensor_type, channel_mask)``; run in eval mode.
    batches : iterable of dict
        Batches of :func:`brainfm.data.collate_windows` (only the four input keys are used).
    n_windows : int
        Stop after this many windows (the last batch is cut to fit).
    max_rows : int
        Input rows kept per layer.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict of str to LinearStats
        Keyed by module name (``model.named_modules()``).
    """
    if n_windows < 1:
        raise ValueError(f"n_windows must be >= 1, got {n_windows}")
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, LinearStats] = {}
    device = next(model.parameters()).device

    def hook(name: str):
        def fn(module: nn.Linear, args: tuple) -> None:
            x = args[0].detach().reshape(-1, module.in_features).float()  # (M, K)
            a = x.abs()
            st = stats.get(name)
            if st is None:
                st = stats[name] = LinearStats(torch.zeros(module.in_features, device=x.device),
                                               torch.zeros(module.in_features, dtype=torch.float64, device=x.device),
                                               0, x.new_zeros(0, module.in_features))
            st.absmax = torch.maximum(st.absmax, a.amax(dim=0))
            st.abs_sum += a.sum(dim=0, dtype=torch.float64)
            st.count += x.shape[0]
            pick = torch.randperm(x.shape[0], generator=gen)[:max_rows].to(x.device)
            rows = torch.cat([st.rows, x[pick]])
            if rows.shape[0] > max_rows:  # keep a random subset of old and new rows
                rows = rows[torch.randperm(rows.shape[0], generator=gen)[:max_rows].to(x.device)]
            st.rows = rows
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        dataset = getattr(batches, "dataset", None)  # a DataLoader knows how many windows it has
        total = min(n_windows, len(dataset)) if dataset is not None else n_windows
        bar = tqdm(total=total, desc="calibrating", unit="window")
    seen = 0
    try:
        for batch in batches:
            take = min(len(batch["x"]), n_windows - seen)
            inputs = [t[:take] for t in decoder_inputs(batch, device)]
            model(*inputs)
            seen += take
            if bar is not None:
                bar.update(take)
            if seen >= n_windows:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if bar is not None:
            bar.close()
    if seen == 0:
        raise ValueError("calibration got no windows")
    for st in stats.values():
        st.n_windows = seen
    return stats

