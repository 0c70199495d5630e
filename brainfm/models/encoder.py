"""The brainfm encoder: sensor tokenizer, criss-cross blocks, final norm.

References
----------
.. [cbramod] Wang, J. et al. (2025). CBraMod: A Criss-Cross Brain Foundation Model for
   EEG Decoding. ICLR 2025. https://arxiv.org/abs/2412.07236
.. [brainomni] Xiao, Q. et al. (2025). BrainOmni: A Brain Foundation Model for Unified
   EEG and MEG Signals. https://arxiv.org/abs/2505.18185
"""

from __future__ import annotations

import torch
from torch import nn

from brainfm.models.attention import CrissCrossBlock
from brainfm.models.config import ModelConfig
from brainfm.models.tokenizer import SensorTokenizer
from brainfm.signal import CHANNEL_TYPES


def _pairs(idx: torch.Tensor, limit: int = 20) -> str:
    """Format ``(sample, channel)`` index pairs for an error message."""
    items = [f"(sample {int(b)}, channel {int(c)})" for b, c in idx[:limit].tolist()]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(items) + more


class BrainEncoder(nn.Module):
    """Montage-agnostic EEG/MEG encoder: windows ``(B, C, T)`` -> tokens ``(B, C, S, D)``.

    A :class:`~brainfm.models.tokenizer.SensorTokenizer` (CBraMod patch embedding plus a
    BrainOmni-style sensor embedding [brainomni]_) followed by ``n_layers``
    :class:`~brainfm.models.attention.CrissCrossBlock` [cbramod]_ and a final LayerNorm
    (the blocks are pre-norm). Nothing depends on channel order or count: a batch may mix
    montages, padded to a common ``C`` and flagged by ``channel_mask``.

    Parameters
    ----------
    config : ModelConfig
        Architecture; see :meth:`ModelConfig.from_name`.

    Notes
    -----
    Input scaling: each channel is divided by the fixed amplitude of its type
    (``config.input_scale``: 100 uV for EEG, 1000 fT for magnetometers, 100 fT/cm for
    gradiometers), so inputs in brainfm's physical units land at O(1). Windows must be a
    whole number of patches: the encoder raises rather than crops.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = SensorTokenizer(config)
        self.blocks = nn.ModuleList(CrissCrossBlock(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)

    def validate(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
    ) -> int:
        """Check shapes and contents; return the number of patches ``S``.

        Raises
        ------
        ValueError
            With the offending ``(sample, channel)`` pairs where that applies.
        """
        if x.ndim != 3:
            raise ValueError(f"x must be (batch, channels, samples), got shape {tuple(x.shape)}")
        b, c, t = x.shape
        expected = {"sensor_geometry": (b, c, 6), "sensor_type": (b, c), "channel_mask": (b, c)}
        got = {"sensor_geometry": sensor_geometry, "sensor_type": sensor_type,
               "channel_mask": channel_mask}
        for key, shape in expected.items():
            if tuple(got[key].shape) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {tuple(got[key].shape)}")
        if channel_mask.dtype != torch.bool:
            raise ValueError(f"channel_mask must be bool, got {channel_mask.dtype}")
        n_patches = self.config.check_window(t)
        if patch_mask is not None and tuple(patch_mask.shape) != (b, c, n_patches):
            raise ValueError(
                f"patch_mask must have shape {(b, c, n_patches)}, got {tuple(patch_mask.shape)}"
            )
        empty = (~channel_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"samples {empty} have no real channel (channel_mask all False)")
        bad_pos = (~torch.isfinite(sensor_geometry[..., :3]).all(-1) & channel_mask).nonzero()
        if len(bad_pos):
            raise ValueError(
                f"real channels without a finite position (the tokenizer needs them): "
                f"{_pairs(bad_pos)}"
            )
        n_types = self.config.n_channel_types
        bad_type = (((sensor_type < 0) | (sensor_type >= n_types)) & channel_mask).nonzero()
        if len(bad_type):
            raise ValueError(
                f"unknown channel type index at {_pairs(bad_type)}; valid indices are "
                f"0..{n_types - 1} ({', '.join(CHANNEL_TYPES)})"
            )
        return n_patches

    def forward(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode a batch of windows.

        Parameters
        ----------
        x : Tensor, shape (B, C, T), float
            Signals in brainfm's physical units (uV, fT, fT/cm) at ``config.sfreq``;
            ``T`` a multiple of the patch size.
        sensor_geometry : Tensor, shape (B, C, 6), float
            Position (m, head coordinates) and orientation, from ``SensorSpec.geometry()``.
        sensor_type : Tensor, shape (B, C), int64
            Index into :data:`brainfm.signal.CHANNEL_TYPES`.
        channel_mask : Tensor, shape (B, C), bool
            True for real channels, False for padding.
        patch_mask : Tensor, shape (B, C, S), bool, optional
            Patches to hide behind the learned mask token (masked reconstruction).

        Returns
        -------
        Tensor, shape (B, C, S, D)
            Tokens; rows of padded channels are zero.
        """
        self.validate(x, sensor_geometry, sensor_type, channel_mask, patch_mask)
        sensor_type = torch.where(channel_mask, sensor_type, torch.zeros_like(sensor_type))
        tokens = self.tokenizer(x, sensor_geometry, sensor_type, channel_mask, patch_mask)
        # Without padding the spatial attention needs no mask (faster SDPA path).
        block_mask = None if bool(channel_mask.all()) else channel_mask
        for block in self.blocks:
            tokens = block(tokens, block_mask)  # (B, C, S, D)
        tokens = self.norm(tokens)
        return tokens * channel_mask[:, :, None, None].to(tokens.dtype)  # (B, C, S, D)

    def patchify(
        self, x: torch.Tensor, sensor_type: torch.Tensor, channel_mask: torch.Tensor
    ) -> torch.Tensor:
        """Patches ``(B, C, S, P)`` in the normalised units the encoder sees."""
        self.config.check_window(x.shape[-1])
        sensor_type = torch.where(channel_mask, sensor_type, torch.zeros_like(sensor_type))
        return self.tokenizer.patchify(x, sensor_type, channel_mask)
