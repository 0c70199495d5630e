"""ASH (Adaptive SwisH, Lee et al. 2022) and the activation registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainfm.models import ASH, get_activation
from brainfm.models.activations import MODEL_ACTIVATIONS


def test_matches_formula():
    torch.manual_seed(0)
    ash = ASH(16)
    with torch.no_grad():
        ash.alpha.fill_(1.7)
        ash.z.fill_(0.4)
    x = torch.randn(3, 5, 16)
    mu = x.mean(-1, keepdim=True)
    sigma = (x.var(-1, keepdim=True, unbiased=False) + ash.eps).sqrt()
    expected = x * torch.sigmoid(1.7 * (x - mu - 0.4 * sigma))
    torch.testing.assert_close(ash(x), expected)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_reduces_to_swish_when_threshold_is_zero(alpha):
    ash = ASH(32, alpha=alpha, z=0.0)
    x = torch.randn(4, 32)
    x = x - x.mean(-1, keepdim=True)  # zero-mean tokens and z = 0: threshold vanishes
    torch.testing.assert_close(ash(x), x * torch.sigmoid(alpha * x))
    if alpha == 1.0:
        torch.testing.assert_close(ash(x), nn.functional.silu(x))


def _ash_functional(x, alpha, z, eps=1e-5):
    """ASH with alpha and z as explicit inputs, so gradcheck also checks their gradients."""
    mu = x.mean(-1, keepdim=True)
    sigma = (x.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    return x * torch.sigmoid(alpha * (x - mu - z * sigma))


def test_gradcheck_float64():
    torch.manual_seed(0)
    ash = ASH(6, alpha=1.3, z=0.2).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ash_functional, (x, alpha, z))
    assert torch.autograd.gradcheck(ash, (x,))
    # the module's parameter gradients equal the functional ones
    ash(x).sum().backward()
    _ash_functional(x.detach(), alpha, z).sum().backward()
    torch.testing.assert_close(ash.alpha.grad, alpha.grad)
    torch.testing.assert_close(ash.z.grad, z.grad)


@pytest.mark.parametrize("value", [0.0, 5.0, -2.0])
def test_constant_tokens_are_stable(value):
    ash = ASH(8, z=1.0)
    x = torch.full((3, 8), value, requires_grad=True)
    y = ash(x)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(ash.alpha.grad) and torch.isfinite(ash.z.grad)


def test_conv_axis():
    ash = ASH(4, axis=1)
    x = torch.randn(2, 4, 9)
    torch.testing.assert_close(ash(x), ASH(4)(x.transpose(1, 2)).transpose(1, 2))
    with pytest.raises(ValueError, match="ASH expects 4 features on axis 1"):
        ash(torch.randn(2, 5, 9))


def test_registry():
    assert set(MODEL_ACTIVATIONS) == {"gelu", "silu", "ash"}
    assert isinstance(get_activation("gelu", 8), nn.GELU)
    assert isinstance(get_activation("silu", 8), nn.SiLU)
    ash = get_activation("ash", 8, axis=1)
    assert isinstance(ash, ASH) and ash.dim == 8 and ash.axis == 1
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        get_activation("swish", 8)
