"""MindBridge's cross-subject path for voxel inputs.

MindBridge (Wang et al., CVPR 2024, https://arxiv.org/abs/2404.07850) decodes fMRI of many
subjects with one model:

* an **aggregation function**, ``AdaptiveMaxPool1d`` over each subject's voxels (a different
  number per subject) to a fixed size ``N``;
* a **per-subject embedder** (aggregated voxels -> shared latent) and **builder** (latent ->
  aggregated voxels) around a **shared translator**;
* a **cycle-consistency loss**: embed subject a's data, rebuild it as subject b with b's
  builder, re-embed it with b's embedder, and ask for the latent back (MSE);
* **reset-tuning**: for a new subject, fresh embedder and builder are trained while the
  translator (everything shared) stays frozen.

MindBridge's translator maps to CLIP image/text embeddings; the data here have no stimuli,
so the translator models the dynamics instead: it maps the latent of ``k`` volumes to the
latent of the next ``k`` (the builder then writes them out in the subject's aggregated
space). The objective is ``forecast + λ_rec · reconstruction + λ_cyc · cycle``.

Subject keys come from :mod:`brainfm.models.subject`, whose ``SubjectLayers`` are the EEG/MEG
counterpart (channel mixing and FiLM around the sensor tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from brainfm.models.subject import subject_key


@dataclass(frozen=True)
class MindBridgeConfig:
    """Sizes of a :class:`MindBridge`.

    Parameters
    ----------
    n_pool : int
        Aggregated voxels per volume (``AdaptiveMaxPool1d`` output size).
    n_volumes : int
        Volumes per input window (``k``); the forecast covers the next ``k``.
    d_latent, d_hidden : int
        Shared latent width and the hidden width of embedders, builders and translator.
    cycle_weight, recon_weight : float
        Weights of the cycle-consistency and reconstruction losses.
    """

    n_pool: int = 64
    n_volumes: int = 4
    d_latent: int = 64
    d_hidden: int = 128
    cycle_weight: float = 0.5
    recon_weight: float = 0.5

    def __post_init__(self) -> None:
        for key in ("n_pool", "n_volumes", "d_latent", "d_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"MindBridgeConfig.{key} must be >= 1")


class VoxelAggregation(nn.Module):
    """MindBridge's aggregation: ``(B, V, T)`` voxels -> ``(B, T, N)`` by ``AdaptiveMaxPool1d``
    over the voxel axis (whatever ``V``; ``V < N`` repeats voxels)."""

    def __init__(self, n_pool: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveMaxPool1d(n_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, v, t = x.shape
        per_volume = x.transpose(1, 2).reshape(b * t, 1, v)  # (B*T, 1, V)
        return self.pool(per_volume).reshape(b, t, -1)  # (B, T, N)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class MindBridge(nn.Module):
    """Per-subject embedders and builders around a shared translator (Wang et al., CVPR 2024).

    Parameters
    ----------
    config : MindBridgeConfig
    subjects : iterable of str
        Subjects that get layers at construction (more with :meth:`add_subject`).
    """

    def __init__(self, config: MindBridgeConfig, subjects: Iterable[str] = ()) -> None:
        super().__init__()
        self.config = config
        self.aggregate = VoxelAggregation(config.n_pool)
        self.embedders = nn.ModuleDict()
        self.builders = nn.ModuleDict()
        d = config.d_latent
        self.translator = nn.Sequential(_mlp(d, config.d_hidden, d))  # shared: latent of k volumes -> next k
        self.subjects: list[str] = []
        for s in subjects:
            self.add_subject(s)

    @property
    def flat(self) -> int:
        return self.config.n_volumes * self.config.n_pool

    def add_subject(self, subject: str) -> None:
        """Fresh embedder and builder for ``subject`` (replacing any it had)."""
        c = self.config
        self.embedders[subject_key(subject)] = _mlp(self.flat, c.d_hidden, c.d_latent)
        self.builders[subject_key(subject)] = _mlp(c.d_latent, c.d_hidden, self.flat)
        if subject not in self.subjects:
            self.subjects.append(subject)

    def embed(self, pooled: torch.Tensor, subject: str) -> torch.Tensor:
        """``(B, T, N)`` aggregated voxels -> ``(B, D)`` shared latent."""
        return self.embedders[subject_key(subject)](pooled.flatten(1))  # (B, T*N) -> (B, D)

    def build(self, z: torch.Tensor, subject: str) -> torch.Tensor:
        """``(B, D)`` latent -> ``(B, T, N)`` aggregated voxels of ``subject``."""
        return self.builders[subject_key(subject)](z).reshape(-1, self.config.n_volumes, self.config.n_pool)

    def forward(self, x: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        """``x`` ``(B, V, T)`` voxels of one subject -> ``pooled`` ``(B, T, N)``, latent ``z``
        ``(B, D)``, its reconstruction ``recon`` and the forecast ``pred`` ``(B, T, N)``."""
        pooled = self.aggregate(x)
        z = self.embed(pooled, subject)
        return {"pooled": pooled, "z": z, "recon": self.build(z, subject),
                "pred": self.build(self.translator(z), subject)}

    def cycle_loss(self, z: torch.Tensor, others: Iterable[str]) -> torch.Tensor:
        """Embed-as-a, rebuild-as-b, re-embed, MSE to ``z``, averaged over subjects ``others``."""
        losses = [F.mse_loss(self.embed(self.build(z, b), b), z) for b in others]
        return torch.stack(losses).mean() if losses else z.new_zeros(())

    def loss(self, x: torch.Tensor, future: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        """Training loss of one subject's batch: ``x`` and ``future`` ``(B, V, T)``."""
        out = self(x, subject)
        target = self.aggregate(future)  # (B, T, N)
        forecast = F.mse_loss(out["pred"], target)
        recon = F.mse_loss(out["recon"], out["pooled"])
        cycle = self.cycle_loss(out["z"], [s for s in self.subjects if s != subject])
        c = self.config
        total = forecast + c.recon_weight * recon + c.cycle_weight * cycle
        return {"loss": total, "forecast": forecast, "recon": recon, "cycle": cycle}

    def reset_tune(self, subject: str) -> list[nn.Parameter]:
        """MindBridge's reset-tuning: fresh layers for ``subject``, every other parameter
        frozen; returns the parameters to train."""
        self.add_subject(subject)
        for p in self.parameters():
            p.requires_grad_(False)
        params = [*self.embedders[subject_key(subject)].parameters(),
                  *self.builders[subject_key(subject)].parameters()]
        for p in params:
            p.requires_grad_(True)
        return params


__all__ = ["MindBridge", "MindBridgeConfig", "VoxelAggregation"]
