"""Dropout [dropout]_ whose CPU masks take a quarter of the random draws.

Why not ``nn.Dropout`` on CPU. PyTorch's CPU dropout draws a Bernoulli sample per element
(``bernoulli_``), then multiplies by a float mask. At ``base`` size with CBraMod's dropout
0.1 that is about a quarter of a CPU train step (``docs/benchmarks.md``, the
equal-settings profile), and the generator, not the arithmetic, is the cost.

What this does instead. :class:`Dropout` draws 64-bit words from the same torch generator
(``torch.manual_seed`` reproduces it) and reads each as four 16-bit uniforms, the way
counter-based generators such as Philox (Salmon et al. 2011) hand out several outputs
per call. An element is dropped where its uniform falls below ``p`` quantised to 1/65536
(the drop probability differs from ``p`` by less than 8e-6), and kept values are scaled by
one over the keep probability actually used (inverted dropout, exactly unbiased). Forward
and backward each read one float mask, as ``F.dropout`` does. On ``base`` activations this
is about 2× cheaper than ``F.dropout`` forward and backward (measured in
``docs/benchmarks.md``).

Anywhere else (CUDA and other devices, where PyTorch's fused Philox dropout is already
cheap; inside ``torch.compile``, whose inductor generates and fuses its own masks; and for
``p`` within 1/65536 of 1) and in eval mode it is exactly ``nn.Dropout``, and it *is* an
``nn.Dropout``: ``.p``, ``isinstance`` checks, state dicts and ONNX export are unchanged.

Where it is used: the criss-cross blocks (residual, feed-forward and attention-probability
dropout, all ``(B, C, S, ·)``-sized). Classification heads keep ``nn.Dropout``: on pooled
``(B, D)`` vectors the mask costs nothing, and their random stream is the one every
committed fine-tuning result in ``docs/results.md`` was drawn with.

References
----------
.. [dropout] Srivastava, N. et al. (2014). Dropout: a simple way to prevent neural
   networks from overfitting. JMLR 15, 1929-1958.
.. Salmon, J. K. et al. (2011). Parallel random numbers: as easy as 1, 2, 3. SC '11.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

UNIFORMS_PER_WORD = 4  # 16-bit uniforms read from one 64-bit draw
LEVELS = 1 << 16  # values of one 16-bit uniform
_INT16_MIN = -(1 << 15)


def drop_levels(p: float) -> int:
    """How many of the :data:`LEVELS` values of a uniform drop an element: ``round(p * 2**16)``."""
    if not 0.0 <= p < 1.0 - 1.0 / LEVELS:
        raise ValueError(f"dropout probability must be in [0, 1 - 2**-16) for 16-bit masks, got {p}")
    return round(p * LEVELS)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool CPU mask of ``shape``, each element True with probability
    ``1 - drop_levels(p) / 2**16`` (``1 - p`` to within 8e-6).

    Each 64-bit word drawn from ``generator`` (torch's default CPU generator if None)
    gives four 16-bit uniforms; element ``i`` is kept where its uniform is not among the
    lowest ``drop_levels(p)`` values.
    """
    threshold = _INT16_MIN + drop_levels(p)
    n = math.prod(shape)
    words = torch.empty(-(-n // UNIFORMS_PER_WORD), dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)  # full int64 range: 64 uniform bits each
    # (n_words,) int64 -> (4 * n_words,) int16, each a uniform on [-2**15, 2**15)
    uniforms = words.view(torch.int16)[:n].view(shape)
    return uniforms >= threshold


class _InvertedDropout(torch.autograd.Function):
    """``x * mask`` with ``mask = keep / P(keep)``; the backward reuses the same mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep_probability = 1.0 - drop_levels(p) / LEVELS
        mask = keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / keep_probability)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with :func:`keep_mask` masks for CPU tensors."""
    if not training or p == 0.0:
        return x
    if (x.device.type != "cpu" or not x.is_floating_point() or p >= 1.0 - 1.0 / LEVELS
            or torch.compiler.is_compiling()):
        return F.dropout(x, p, training)
    return _InvertedDropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` that uses :func:`dropout` (cheaper masks on CPU, identical elsewhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # no in-place fast path; keep nn.Dropout's semantics exactly
            return super().forward(x)
        return dropout(x, self.p, self.training)
