"""From raw multichannel windows to tokens: patch embedding plus sensor embedding.

One token per (channel, 1-s patch). A token is the sum of

* a **patch embedding** of the patch's samples: a small temporal conv branch plus a
  spectral branch (rFFT magnitude -> linear), as in CBraMod (Wang et al., ICLR 2025),
  plus (``ModelConfig.log_spectrum``) a log-power spectral branch that carries the
  patch's absolute power on a log scale, as log band power features do;
* a **sensor embedding** of the channel: an MLP over its position and orientation plus a
  learned type embedding, as in BrainOmni's sensor encoder (Xiao et al., 2025). It depends
  on each channel's own geometry only, so the same weights serve any montage, channel
  order or channel count (19/64-ch EEG, Neuromag and KIT MEG, mixed batches);
* a **temporal position encoding**: a fixed sinusoidal table (Vaswani et al., 2017).

Design choices
--------------
Positions are normalised by a fixed per-type radius (``ModelConfig.position_scale``:
0.095 m for electrodes, 0.12 m for MEG coils) rather than by statistics of the channels
present in a sample: a fixed scale keeps each electrode's embedding identical whatever
subset of the montage is recorded, and makes padded channels unable to move real ones.

The temporal encoding is sinusoidal rather than CBraMod's ACPE (a depthwise conv with a
19-tap kernel across the *channel* axis): a conv over channel order breaks permutation
equivariance and lets padded channels leak into real ones. A sinusoidal table has no
parameters, so every window length up to ``max_patches`` is equally well defined and the
state dict does not depend on ``max_patches``; relative timing is learned by the temporal
attention heads.

The conv branch normalises (GroupNorm) within each patch, not across the whole sample as
CBraMod's ``Conv2d`` over ``(c n)`` does, again so that padded channels cannot leak.

References
----------
.. [cbramod] Wang, J. et al. (2025). CBraMod: A Criss-Cross Brain Foundation Model for
   EEG Decoding. ICLR 2025. https://arxiv.org/abs/2412.07236
.. [brainomni] Xiao, Q. et al. (2025). BrainOmni: A Brain Foundation Model for Unified
   EEG and MEG Signals. https://arxiv.org/abs/2505.18185
"""

from __future__ import annotations

import math

import torch
from torch import nn

from brainfm.models.activations import get_activation
from brainfm.models.config import ModelConfig


def _group_count(channels: int) -> int:
    """GroupNorm groups: 5 as in CBraMod when possible, else the largest small divisor."""
    return next(g for g in (5, 4, 2, 1) if channels % g == 0)


#: Fixed centring of the log-power branch: ``(ln(|X_k|^2 + eps) - CENTER) / SCALE``. A 10-uV
#: white patch at the 100-uV input scale has ``|X_k|^2`` near 5e-5 (ln = -9.9) per bin of the
#: forward-normalised rFFT, so EEG lands at O(1); fixed constants (not batch statistics)
#: keep a token independent of the other channels and windows in its batch. The floor
#: ``eps`` (ln = -13.8, about 0.01 uV per bin) keeps near-empty bins above the low-pass,
#: and padded patches, from amplifying rounding error (ONNX Runtime's rFFT differs from
#: torch's in the last bits, which ln would blow up at 1e-10).
LOG_POWER_CENTER, LOG_POWER_SCALE, LOG_POWER_EPS = -9.0, 3.0, 1e-6


class PatchEmbedding(nn.Module):
    """Embed each patch of ``patch_size`` samples into ``d_model`` features.

    Temporal branch: three Conv1d layers (the first with stride ``patch_size // 8``, so
    about 8 output steps, as CBraMod's 49/25 conv on 200-sample patches) with GroupNorm
    and activation, flattened and projected to ``d_model``. Spectral branch: magnitude of
    the forward-normalised rFFT, projected to ``d_model``. The two are summed [cbramod]_.

    Log-power branch (``config.log_spectrum``): ``ln |X_k|^2`` of the same rFFT, centred
    and scaled by fixed constants, projected to ``d_model`` and added. GroupNorm removes
    each patch's gain from the conv branch and the linear spectrum is tiny at the model's
    input scale, so this branch is what lets a token tell a 5-uV alpha patch from a
    50-uV one, and compare band powers on the log scale on which they are roughly
    Gaussian across windows and subjects (the scale of log band power features).

    Parameters
    ----------
    config : ModelConfig
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        p, ch, d = config.patch_size, config.conv_channels, config.d_model
        stride = max(1, p // 8)
        groups = _group_count(ch)
        self.conv = nn.Sequential(
            nn.Conv1d(1, ch, kernel_size=2 * stride - 1, stride=stride, padding=stride - 1),
            nn.GroupNorm(groups, ch),
            get_activation(config.activation, ch, axis=1),
            nn.Conv1d(ch, ch, kernel_size=3, padding=1),
            nn.GroupNorm(groups, ch),
            get_activation(config.activation, ch, axis=1),
            nn.Conv1d(ch, ch, kernel_size=3, padding=1),
            nn.GroupNorm(groups, ch),
            get_activation(config.activation, ch, axis=1),
        )
        steps = (p - 1) // stride + 1
        self.temporal_proj = nn.Linear(ch * steps, d)
        self.spectral_proj = nn.Linear(p // 2 + 1, d)
        self.log_spectral_proj = nn.Linear(p // 2 + 1, d) if config.log_spectrum else None

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches`` ``(..., P)`` -> embeddings ``(..., D)``."""
        lead = patches.shape[:-1]
        flat = patches.reshape(-1, 1, patches.shape[-1])  # (N, 1, P), N = B*C*S
        temporal = self.conv(flat).flatten(1)  # (N, ch * steps)
        temporal = self.temporal_proj(temporal)  # (N, D)
        spectrum = torch.fft.rfft(flat[:, 0], dim=-1, norm="forward").abs()  # (N, P//2+1)
        emb = temporal + self.spectral_proj(spectrum)  # (N, D)
        if self.log_spectral_proj is not None:
            log_power = (torch.log(spectrum.square() + LOG_POWER_EPS) - LOG_POWER_CENTER) / LOG_POWER_SCALE
            emb = emb + self.log_spectral_proj(log_power)  # (N, D)
        return emb.reshape(*lead, -1)  # (..., D)


class SensorEmbedding(nn.Module):
    """Per-channel embedding from geometry and type (BrainOmni-style sensor encoder).

    ``MLP([pos / r_type, orientation]) + type_embedding[type]``, where ``r_type`` is the
    fixed radius of the channel's modality (``ModelConfig.position_scale``) [brainomni]_.

    Parameters
    ----------
    config : ModelConfig
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, d = config.sensor_hidden, config.d_model
        self.mlp = nn.Sequential(
            nn.Linear(6, h), get_activation(config.activation, h), nn.Linear(h, d)
        )
        self.type_embedding = nn.Embedding(config.n_channel_types, d)
        self.register_buffer(
            "position_scale", torch.tensor(config.position_scale), persistent=False
        )

    def forward(self, sensor_geometry: torch.Tensor, sensor_type: torch.Tensor) -> torch.Tensor:
        """``(B, C, 6)`` geometry and ``(B, C)`` types -> ``(B, C, D)``.

        Geometry must be finite (padded channels zeroed by the caller).
        """
        radius = self.position_scale[sensor_type].unsqueeze(-1)  # (B, C, 1)
        feats = torch.cat(
            [sensor_geometry[..., :3] / radius, sensor_geometry[..., 3:]], dim=-1
        )  # (B, C, 6)
        return self.mlp(feats) + self.type_embedding(sensor_type)  # (B, C, D)


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos position table ``(n_positions, dim)`` (Vaswani et al., 2017)."""
    pos = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (S, 1)
    freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim)
    )  # (ceil(D/2),)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.float()


class SensorTokenizer(nn.Module):
    """Windows ``(B, C, T)`` in physical units -> tokens ``(B, C, S, D)``.

    Steps: divide by the per-type input scale, cut into ``S = T // patch_size`` patches,
    embed the patches, swap masked patches for a learned mask token, add the sensor
    embedding and the temporal position encoding, and zero padded channels.

    Parameters
    ----------
    config : ModelConfig
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedding = PatchEmbedding(config)
        self.sensor_embedding = SensorEmbedding(config)
        self.mask_token = nn.Parameter(torch.zeros(config.d_model))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer(
            "input_scale", torch.tensor(config.input_scale), persistent=False
        )
        self.register_buffer(
            "time_table", sinusoidal_table(config.max_patches, config.d_model), persistent=False
        )

    def patchify(
        self, x: torch.Tensor, sensor_type: torch.Tensor, channel_mask: torch.Tensor
    ) -> torch.Tensor:
        """Scale to model units and cut into patches: ``(B, C, T)`` -> ``(B, C, S, P)``.

        This is also the reconstruction target of masked pretraining. Padded channels
        are zero whatever they contained (NaN included).
        """
        scale = self.input_scale[sensor_type].unsqueeze(-1)  # (B, C, 1)
        x = torch.where(channel_mask.unsqueeze(-1), x / scale, torch.zeros((), dtype=x.dtype))
        b, c, t = x.shape
        p = self.config.patch_size
        return x.reshape(b, c, t // p, p)  # (B, C, S, P)

    def forward(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        patches = self.patchify(x, sensor_type, channel_mask)  # (B, C, S, P)
        tokens = self.patch_embedding(patches)  # (B, C, S, D)
        if patch_mask is not None:
            tokens = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        geometry = torch.where(
            channel_mask.unsqueeze(-1), sensor_geometry, torch.zeros((), dtype=sensor_geometry.dtype)
        )  # (B, C, 6), padded rows zeroed (they may hold NaN)
        sensor = self.sensor_embedding(geometry, sensor_type)  # (B, C, D)
        s = patches.shape[2]
        tokens = tokens + sensor.unsqueeze(2) + self.time_table[:s]  # (B, C, S, D)
        return tokens * channel_mask[:, :, None, None].to(tokens.dtype)  # (B, C, S, D)
