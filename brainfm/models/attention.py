"""Criss-cross transformer block on ``F.scaled_dot_product_attention``.

Half the heads attend across channels within each time patch (spatial), the other half
across patches within each channel (temporal), as in CBraMod (Wang et al., ICLR 2025).
Both attentions run as one fused SDPA call each, with a key-padding mask in the spatial
branch so that padded channels of a mixed-montage batch are never attended to.

Layout. With ``split_attention=True`` (default, CBraMod's layout and what braindecode's
``CrissCrossTransformerEncoderLayer`` computes) the spatial heads read the first half of
the features and the temporal heads the second half, each through its own fused QKV and
output projection; this halves the projection FLOPs of a full-width layout
(``split_attention=False``: one ``Linear(D, 3D)`` and one ``Linear(D, D)``, heads still
split half/half). Both layouts are pre-norm with a shared feed-forward.

Speed. Every SDPA operand is a 4-D strided view of the fused QKV output (no copies), and
attention-probability dropout is off by default (``ModelConfig.attn_dropout``), so PyTorch
runs its fused flash kernel on CPU and GPU; braindecode's ``nn.MultiheadAttention`` with
dropout falls back to the unfused path and pays for the transposes and the materialised
attention matrix. Every dropout here (residual, feed-forward and, when switched on,
attention probabilities) is :mod:`brainfm.models.dropout`'s, whose CPU masks cost a
quarter of the random draws of ``nn.Dropout``'s.

:func:`load_braindecode_criss_cross` copies braindecode weights into a block; the parity
test checks the two compute the same function.

References
----------
.. [cbramod] Wang, J. et al. (2025). CBraMod: A Criss-Cross Brain Foundation Model for
   EEG Decoding. ICLR 2025. https://arxiv.org/abs/2412.07236
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainfm.models.activations import get_activation
from brainfm.models.config import ModelConfig
from brainfm.models.dropout import Dropout, dropout


class FeedForward(nn.Module):
    """``Linear(D, F) -> activation -> dropout -> Linear(F, D)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(config.d_model, config.d_ff)
        self.activation = get_activation(config.activation, config.d_ff)
        self.dropout = Dropout(config.dropout)
        self.linear2 = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class CrissCrossBlock(nn.Module):
    """Pre-norm criss-cross transformer block [cbramod]_.

    ``x + Dropout(CrissCrossAttention(LN(x)))`` then ``x + Dropout(FFN(LN(x)))``.

    Parameters
    ----------
    config : ModelConfig
        Uses ``d_model``, ``n_heads``, ``d_ff``, ``dropout``, ``attn_dropout``,
        ``activation``, ``split_attention`` and ``norm_eps``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_half = config.n_heads // 2  # heads per branch
        self.head_dim = config.head_dim
        self.split = config.split_attention
        self.attn_dropout_p = config.attn_dropout
        self.norm1 = nn.LayerNorm(d, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.norm_eps)
        if self.split:
            half = self.n_half * self.head_dim
            self.qkv_s = nn.Linear(half, 3 * half)  # spatial heads, first half of features
            self.qkv_t = nn.Linear(half, 3 * half)  # temporal heads, second half
            self.out_s = nn.Linear(half, half)
            self.out_t = nn.Linear(half, half)
        else:
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)
        self.ff = FeedForward(config)
        self.dropout1 = Dropout(config.dropout)
        self.dropout2 = Dropout(config.dropout)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
        p = self.attn_dropout_p if self.training else 0.0
        if p == 0.0 or q.device.type != "cpu":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        # CPU with probability dropout: SDPA has no fused kernel for it and runs these same
        # unfused maths; written out, the dropout draws brainfm's cheaper masks
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (..., L_q, L_k)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return dropout(scores.softmax(dim=-1), p) @ v  # (..., L_q, head_dim)

    def attention(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Criss-cross attention of normalised tokens ``(B, C, S, D)`` -> ``(B, C, S, D)``.

        ``key_mask`` is ``(B, 1, 1, C)`` bool (True = real channel) or None.

        The fused QKV output of each branch is laid out ``(head, q/k/v, head_dim)``, so
        that every SDPA operand below is a strided *view* (no copy): with 4-D operands,
        no attention-probability dropout and a boolean mask, PyTorch picks its fused
        flash kernel on CPU and GPU.
        """
        b, c, s, d = x.shape
        h, hd = self.n_half, self.head_dim
        if self.split:
            half = d // 2
            qkv_s = self.qkv_s(x[..., :half])  # (B, C, S, h*3*hd)
            qkv_t = self.qkv_t(x[..., half:])  # (B, C, S, h*3*hd)
        else:
            qkv_s, qkv_t = self.qkv(x).view(b, c, s, 2, 3 * h * hd).unbind(3)  # 2 x (B,C,S,3D/2)
        # spatial: one sequence over channels per (batch, patch, head); the reshapes are
        # views except in the full-width layout, whose unbind leaves strided halves
        qkv_s = qkv_s.reshape(b, c, s * h, 3, hd).transpose(1, 2)  # (B, S*h, C, 3, hd)
        out_s = self._sdpa(qkv_s[..., 0, :], qkv_s[..., 1, :], qkv_s[..., 2, :], key_mask)
        out_s = out_s.transpose(1, 2).reshape(b, c, s, h * hd)  # (B, S*h, C, hd) -> (B, C, S, D/2)
        # temporal: one sequence over patches per (batch, channel, head)
        qkv_t = qkv_t.reshape(b * c, s, h, 3, hd).transpose(1, 2)  # (B*C, h, S, 3, hd)
        out_t = self._sdpa(qkv_t[..., 0, :], qkv_t[..., 1, :], qkv_t[..., 2, :], None)
        out_t = out_t.transpose(1, 2).reshape(b, c, s, h * hd)  # (B*C, h, S, hd) -> (B, C, S, D/2)
        if self.split:
            return torch.cat([self.out_s(out_s), self.out_t(out_t)], dim=-1)  # (B, C, S, D)
        return self.out(torch.cat([out_s, out_t], dim=-1))  # (B, C, S, D)

    def forward(self, x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``(B, C, S, D)`` -> ``(B, C, S, D)``.

        Parameters
        ----------
        x : Tensor, shape (B, C, S, D)
        channel_mask : Tensor of bool, shape (B, C), optional
            True for real channels. Padded channels are excluded as keys of the spatial
            attention and their output rows are zeroed. None means all channels are real.
        """
        key_mask = None
        if channel_mask is not None:
            key_mask = channel_mask[:, None, None, :]  # (B, 1, 1, C), broadcast over S*h and queries
        x = x + self.dropout1(self.attention(self.norm1(x), key_mask))
        x = x + self.dropout2(self.ff(self.norm2(x)))
        if channel_mask is not None:
            x = x * channel_mask[:, :, None, None].to(x.dtype)  # (B, C, S, D), padded rows = 0
        return x


@torch.no_grad()
def load_braindecode_criss_cross(block: CrissCrossBlock, bd_layer: nn.Module) -> CrissCrossBlock:
    """Copy a braindecode ``CrissCrossTransformerEncoderLayer`` into ``block``.

    braindecode's layer (adapted from CBraMod) always runs pre-norm, splits ``d_model``
    in halves (``self_attn_s`` on the first, ``self_attn_t`` on the second, each an
    ``nn.MultiheadAttention`` of ``nhead // 2`` heads with a packed ``[q; k; v]``
    ``in_proj``), and has a shared ``linear1 -> activation -> linear2`` feed-forward.
    That is ``split_attention=True`` here, parameter for parameter.

    Returns
    -------
    CrissCrossBlock
        ``block``, for chaining.
    """
    if not block.split:
        raise ValueError("braindecode's layer splits d_model; build the block with split_attention=True")
    d = block.norm1.normalized_shape[0]
    if bd_layer.linear1.in_features != d or bd_layer.self_attn_s.num_heads != block.n_half:
        raise ValueError(
            f"shape mismatch: block d_model={d}, heads/branch={block.n_half}; braindecode "
            f"d_model={bd_layer.linear1.in_features}, heads/branch={bd_layer.self_attn_s.num_heads}"
        )
    pairs = [
        (block.norm1, bd_layer.norm1), (block.norm2, bd_layer.norm2),
        (block.ff.linear1, bd_layer.linear1), (block.ff.linear2, bd_layer.linear2),
        (block.out_s, bd_layer.self_attn_s.out_proj), (block.out_t, bd_layer.self_attn_t.out_proj),
    ]
    for ours, theirs in pairs:
        ours.weight.copy_(theirs.weight)
        ours.bias.copy_(theirs.bias)
    h, hd = block.n_half, block.head_dim
    for ours, mha in ((block.qkv_s, bd_layer.self_attn_s), (block.qkv_t, bd_layer.self_attn_t)):
        # torch packs rows as (q/k/v, head, head_dim); brainfm as (head, q/k/v, head_dim)
        ours.weight.copy_(mha.in_proj_weight.view(3, h, hd, -1).transpose(0, 1).reshape_as(ours.weight))
        ours.bias.copy_(mha.in_proj_bias.view(3, h, hd).transpose(0, 1).reshape_as(ours.bias))
    return block
