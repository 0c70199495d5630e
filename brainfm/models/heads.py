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


class AttentionPool(nn.Module):
    """Attention pooling over real-channel tokens: ``(B, C, S, D)`` -> ``(B, D)``.

    One learned query scores every token (``q·k / sqrt(D)``, padded channels excluded) and
    the pooled vector is the softmax-weighted sum of the tokens, the single-query
    cross-attention pooling of set transformers (PMA, Lee et al., ICML 2019). It lets the
    head weight informative channels and patches instead of averaging them.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d_model))  # zero query = uniform weights = mean pooling
        self.key = nn.Linear(d_model, d_model, bias=False)

    def forward(self, tokens: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        b, c, s, d = tokens.shape
        flat = tokens.reshape(b, c * s, d)  # (B, C*S, D)
        scores = self.key(flat) @ self.query / d**0.5  # (B, C*S)
        keep = channel_mask[:, :, None].expand(b, c, s).reshape(b, c * s)  # (B, C*S)
        scores = scores.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores, dim=1)  # (B, C*S)
        return torch.einsum("bn,bnd->bd", weights, flat)  # (B, D)


class ClassificationHead(nn.Module):
    """Pool real-channel tokens (mean or attention), then ``LayerNorm -> Dropout -> Linear``.

    Hybrid option (``n_features > 0``): a window-level feature vector (already
    standardised, e.g. the z-scored neurodynamics vector of :mod:`brainfm.targets`) is
    concatenated with the normalised pooled tokens before the dropout and the linear
    layer, so the head can weigh learned and hand-crafted features side by side.

    Parameters
    ----------
    d_model : int
        Token width.
    n_outputs : int
        Number of classes (logits).
    dropout : float
        Dropout before the linear layer.
    pooling : {'mean', 'attention'}
        Masked mean over channels and patches, or :class:`AttentionPool`.
    n_features : int
        Length of the extra feature vector (0: tokens only).
    """

    def __init__(self, d_model: int, n_outputs: int, dropout: float = 0.0, pooling: str = "mean",
                 n_features: int = 0) -> None:
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {pooling!r}")
        if n_features < 0:
            raise ValueError(f"n_features must be >= 0, got {n_features}")
        self.pooling = pooling
        self.n_features = n_features
        self.pool = AttentionPool(d_model) if pooling == "attention" else None
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_model + n_features, n_outputs)

    def pooled(self, tokens: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, D)`` -> ``(B, D)`` pooled features (before the norm)."""
        return self.pool(tokens, channel_mask) if self.pool is not None else masked_mean(tokens, channel_mask)

    def forward(self, tokens: torch.Tensor, channel_mask: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, S, D)`` tokens, ``(B, C)`` mask and, for a hybrid head, ``(B, n_features)``
        standardised features -> ``(B, n_outputs)`` logits."""
        h = self.norm(self.pooled(tokens, channel_mask))  # (B, D)
        if self.n_features:
            if features is None or features.shape[-1] != self.n_features:
                got = None if features is None else tuple(features.shape)
                raise ValueError(f"this hybrid head needs features of shape (batch, {self.n_features}), got {got}")
            h = torch.cat([h, features.to(h.dtype)], dim=-1)  # (B, D + K)
        return self.linear(self.dropout(h))


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
