"""Activation functions and the registry the config selects them from.

:class:`ASH` is Adaptive SwisH (Lee et al., 2022): a Swish whose gate is shifted by a
per-token threshold ``mu + z * sigma`` computed over the hidden dimension, so that the
unit keeps roughly the top fraction of features of each token (a smooth, trainable
top-k). On CUDA tensors :class:`ASH` over the last axis runs the fused Triton kernel
:func:`brainfm.kernels.fused_ash` (one read of ``x``, one write of ``y``, with a fused
backward); elsewhere it runs the plain PyTorch formula. :func:`get_activation` maps the config strings ``'gelu'``, ``'silu'`` and
``'ash'`` to modules, so every place in :mod:`brainfm.models` that has an activation
(feed-forward, patch-embedding convs, sensor MLP) follows ``ModelConfig.activation``.

References
----------
.. [ash] Lee, K., Yang, J., Lee, H., & Hwang, S. J. (2022). Stochastic Adaptive
   Activation Function (ASH: Adaptive SwisH). NeurIPS 2022. https://arxiv.org/abs/2210.11672
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

try:  # the fused kernel needs triton, which brainfm installs on Linux only
    from brainfm.kernels.ash import MAX_D as FUSED_MAX_D
    from brainfm.kernels.ash import fused_ash
except ImportError:  # pragma: no cover - platforms without triton run the PyTorch formula
    fused_ash, FUSED_MAX_D = None, 0

#: Activation names a :class:`~brainfm.models.ModelConfig` can select (``activation``). Not to be
#: confused with :data:`brainfm.kernels.reference.ACTIVATIONS`, the epilogues the quantized
#: GEMM kernels fuse.
MODEL_ACTIVATIONS: tuple[str, ...] = ("gelu", "silu", "ash")


class ASH(nn.Module):
    r"""Adaptive SwisH: :math:`x \cdot \sigma(\alpha (x - \mu_x - z \sigma_x))`.

    ``mu_x`` and ``sigma_x`` are the mean and (biased) standard deviation of each token
    over the feature axis; ``alpha`` (gate sharpness) and ``z`` (threshold in standard
    deviations) are trainable scalars, as in Lee et al. (2022) [ash]_. With ``z = 0`` and
    zero-mean tokens ASH is exactly Swish ``x * sigmoid(alpha * x)``.

    Parameters
    ----------
    dim : int
        Size of the feature axis; checked at run time so that a misplaced axis fails
        loudly instead of normalising over the wrong dimension.
    axis : int
        Feature axis over which ``mu`` and ``sigma`` are computed (``-1`` for token
        features, ``1`` for conv channels).
    alpha : float
        Initial gate sharpness.
    z : float
        Initial threshold in standard deviations (``0`` keeps about half the features).
    eps : float
        Added to the variance inside the square root, so constant tokens (``sigma = 0``)
        have finite output and gradients.

    References
    ----------
    .. [ash] Lee, K. et al. (2022). Stochastic Adaptive Activation Function. NeurIPS 2022.
    """

    def __init__(
        self, dim: int, axis: int = -1, alpha: float = 1.0, z: float = 0.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.dim = int(dim)
        self.axis = int(axis)
        self.eps = float(eps)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.z = nn.Parameter(torch.tensor(float(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.axis] != self.dim:
            raise ValueError(
                f"ASH expects {self.dim} features on axis {self.axis}, got shape {tuple(x.shape)}"
            )
        if self.uses_fused_kernel(x):
            return fused_ash(x, self.alpha, self.z, self.eps)
        mu = x.mean(dim=self.axis, keepdim=True)
        var = x.var(dim=self.axis, keepdim=True, unbiased=False)
        sigma = torch.sqrt(var + self.eps)
        alpha = self.alpha.to(x.dtype)
        z = self.z.to(x.dtype)
        return x * torch.sigmoid(alpha * (x - mu - z * sigma))

    def uses_fused_kernel(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` runs the fused Triton kernel: CUDA, features on the last axis."""
        return (fused_ash is not None and x.is_cuda and self.axis in (-1, x.ndim - 1)
                and 0 < x.shape[-1] <= FUSED_MAX_D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, axis={self.axis}, eps={self.eps}"


_REGISTRY: dict[str, Callable[[int, int], nn.Module]] = {
    "gelu": lambda dim, axis: nn.GELU(),
    "silu": lambda dim, axis: nn.SiLU(),
    "ash": lambda dim, axis: ASH(dim, axis=axis),
}


def get_activation(name: str, dim: int, axis: int = -1) -> nn.Module:
    """Build the activation called ``name`` for features of size ``dim``.

    Parameters
    ----------
    name : {'gelu', 'silu', 'ash'}
        Activation name, as in ``ModelConfig.activation``.
    dim : int
        Number of features on ``axis`` (used by :class:`ASH`; ignored by pointwise ones).
    axis : int
        Feature axis (``-1`` for ``(..., D)`` tokens, ``1`` for ``(N, C, L)`` conv maps).

    Returns
    -------
    torch.nn.Module
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(MODEL_ACTIVATIONS)}"
        ) from None
    return factory(dim, axis)
