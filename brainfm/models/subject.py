"""Subject-specific layers around the shared trunk, for cross-subject reset-tuning.

MindBridge (Wang et al., CVPR 2024, https://arxiv.org/abs/2404.07850) decodes fMRI of
many subjects with one shared model wrapped in small subject-specific layers (an
embedder from each subject's voxels into the shared space and a builder back). To adapt
to a new subject it *reset-tunes*: fresh subject-specific layers are added, the shared
part is frozen, and only the new layers are trained on a little of the new subject's data.

For EEG and MEG the shared part already reads any montage (the sensor tokenizer), so
the subject-specific layers model what differs between heads rather than between voxel
grids. Two differences dominate:

* **Spatial mixing.** Head shape, skull conductivity, cortical folding and cap
  placement change the lead field, so the same source activity reaches the sensors with
  different weights in each subject. A learned linear re-mixing of that subject's
  channels, ``x_s' = (I + Δ_s) x_s`` with ``Δ_s`` of shape ``(C_s, C_s)``, can undo a
  linear lead-field change. It is the learned counterpart of the per-subject spatial
  whitening of Euclidean alignment (He & Wu, IEEE TBME 2019), which is a fixed matrix of
  this form.
* **Feature-statistics shift.** Amplitude, impedance and background-rhythm differences
  shift the distribution of the trunk's output features; a per-subject affine rescaling
  of the tokens, ``γ_s ⊙ z + β_s`` (FiLM, Perez et al. 2018), re-centres it, as adaptive
  batch normalisation (AdaBN, Li et al. 2016) does with re-estimated statistics.

Both are the identity at initialisation (``Δ_s = 0``, ``γ_s = 1``, ``β_s = 0``), so a
subject without layers, or with fresh ones, gets the shared model exactly; weight decay
on ``Δ_s`` pulls the mixing back towards the identity, which keeps a few seconds of
calibration data from overfitting a 19 × 19 matrix. A new subject costs
``C_s² + 2·D`` parameters (425 for 19 EEG channels and the ``tiny`` trunk).

MindBridge's optional cycle-consistency loss (reconstructing a source subject's input
through the new subject's builder) is not used: these layers have no builder, since the
decoder reads the shared tokens directly.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn


def subject_key(subject: str) -> str:
    """ModuleDict keys may not contain dots; subject ids become safe attribute names."""
    return "s_" + re.sub(r"[^0-9A-Za-z_]", "_", subject)


class SubjectAdapter(nn.Module):
    """One subject's layers: channel mixing ``(C, C)`` on the input, FiLM ``(D,)`` on tokens."""

    def __init__(self, n_channels: int, d_model: int) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.mix_delta = nn.Parameter(torch.zeros(n_channels, n_channels))  # Δ_s; I + Δ_s mixes
        self.token_scale = nn.Parameter(torch.ones(d_model))  # γ_s
        self.token_shift = nn.Parameter(torch.zeros(d_model))  # β_s

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T)`` -> ``(N, C, T)``: ``x + Δ_s x`` over this subject's real channels. Outside training
        a zero ``Δ_s`` (e.g. a subject set from token statistics) leaves ``x`` untouched, with any channel count."""
        trains = torch.is_grad_enabled() and self.mix_delta.requires_grad
        if not trains and not bool(self.mix_delta.any()):
            return x
        c = self.n_channels
        if x.shape[1] < c:
            raise ValueError(f"subject adapter expects {c} channels, the batch has {x.shape[1]}")
        real = x[:, :c]  # (N, C_s, T)
        mixed = real + torch.einsum("ij,njt->nit", self.mix_delta, real)
        return torch.cat([mixed, x[:, c:]], dim=1) if x.shape[1] > c else mixed

    def modulate(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, D)`` -> ``(N, C, S, D)``: ``γ_s ⊙ z + β_s``."""
        return tokens * self.token_scale + self.token_shift

    def is_identity(self) -> bool:
        """Whether these layers are still fresh (no mixing, FiLM ``γ = 1, β = 0``): never trained or set."""
        return bool((self.mix_delta == 0).all() and (self.token_scale == 1).all() and (self.token_shift == 0).all())


class SubjectLayers(nn.Module):
    """The subject-specific layers of a model, keyed by subject id.

    Subjects without layers pass through unchanged (the shared model).
    """

    def __init__(self, d_model: int, subject_channels: dict[str, int] | None = None) -> None:
        super().__init__()
        self.d_model = d_model
        self.adapters = nn.ModuleDict()
        self.channels: dict[str, int] = {}
        for subject, n in (subject_channels or {}).items():
            self.add(subject, n)

    def __len__(self) -> int:
        return len(self.channels)

    def __contains__(self, subject: str) -> bool:
        return subject in self.channels

    def add(self, subject: str, n_channels: int, reset: bool = True) -> SubjectAdapter:
        """Fresh (identity) layers for ``subject``; replaces existing ones when ``reset``."""
        key = subject_key(subject)
        if subject in self.channels and not reset:
            return self.adapters[key]
        self.adapters[key] = SubjectAdapter(n_channels, self.d_model)
        self.channels[subject] = int(n_channels)
        return self.adapters[key]

    def get(self, subject: str) -> SubjectAdapter:
        return self.adapters[subject_key(subject)]

    def _per_subject(self, t: torch.Tensor, subjects: Sequence[str], method: str) -> torch.Tensor:
        """Apply ``SubjectAdapter.<method>`` to the rows of ``t`` of each subject with layers."""
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(subjects):
            if s in self.channels:
                groups.setdefault(s, []).append(i)
        if not groups:
            return t
        out = t.clone()
        for subject, idx in groups.items():
            index = torch.as_tensor(idx, device=t.device)
            out[index] = getattr(self.get(subject), method)(t[index])
        return out

    def mix(self, x: torch.Tensor, subjects: Sequence[str]) -> torch.Tensor:
        """Apply each sample's subject mixing to ``x`` ``(B, C, T)``."""
        return self._per_subject(x, subjects, "mix")

    def modulate(self, tokens: torch.Tensor, subjects: Sequence[str]) -> torch.Tensor:
        """Apply each sample's subject FiLM to ``tokens`` ``(B, C, S, D)``."""
        return self._per_subject(tokens, subjects, "modulate")
