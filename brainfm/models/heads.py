"""Small heads on encoder tokens ``(B, C, S, D)``.

No head flattens all tokens into one vector: reconstruction works per token and
classification pools first, so both run on any montage and window length.
"""

from __future__ import annotations

import torch
from torch import nn

from brainfm.models.activations import get_activation


class ReconstructionHead(nn.Module):
    """Token -> the samples of its patch: ``(B, C, S, D)`` -> ``(B, C, S, P)``.

    ``Linear(D, D) -> activation -> Linear(D, P)``, as the masked-patch reconstruction of
    CBraMod (Wang et al., ICLR 2025) predicts each patch from its own token.

    Parameters
    ----------
    d_model : int
        Token width.
    patch_size : int
        Samples per patch.
    activation : {'gelu', 'silu', 'ash'}
        Hidden activation (pass ``ModelConfig.activation``).
    """

    def __init__(self, d_model: int, patch_size: int, activation: str = "gelu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_model),
            get_activation(activation, d_model),
            nn.Linear(d_model, patch_size),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)  # (B, C, S, P)


def masked_mean(tokens: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real channels and all patches: ``(B, C, S, D)`` -> ``(B, D)``."""
    w = channel_mask.to(tokens.dtype)[:, :, None, None]  # (B, C, 1, 1)
    total = (tokens * w).sum(dim=(1, 2))  # (B, D)
    count = w.sum(dim=(1, 2)).clamp_min(1.0) * tokens.shape[2]  # (B, 1)
    return total / count


class ClassificationHead(nn.Module):
    """Masked mean pooling over real channels and patches, then ``LayerNorm -> Linear``.

    Parameters
    ----------
    d_model : int
        Token width.
    n_outputs : int
        Number of classes (logits).
    dropout : float
        Dropout before the linear layer.
    """

    def __init__(self, d_model: int, n_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_model, n_outputs)

    def forward(self, tokens: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, D)`` tokens and ``(B, C)`` mask -> ``(B, n_outputs)`` logits."""
        pooled = masked_mean(tokens, channel_mask)  # (B, D)
        return self.linear(self.dropout(self.norm(pooled)))


class NeurodynamicsHead(nn.Module):
    """Pooled tokens -> the (z-scored) neurodynamics target vector.

    DeeperBrain (2026) pretrains an EEG encoder to predict interpretable order
    parameters of the signal (band power, connectivity, coupling, complexity) from the
    masked input, next to masked reconstruction. The head is deliberately small:
    masked mean pooling, ``LayerNorm -> Linear -> GELU -> Linear``.

    Parameters
    ----------
    d_model : int
        Token width.
    n_targets : int
        Length of the target vector.
    hidden : int, optional
        Hidden width (default ``d_model``).
    """

    def __init__(self, d_model: int, n_targets: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or d_model
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, n_targets)
        )

    def forward(self, tokens: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, D)`` tokens and ``(B, C)`` mask -> ``(B, n_targets)``."""
        return self.net(masked_mean(tokens, channel_mask))
