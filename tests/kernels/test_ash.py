"""Fused ASH: forward allclose and gradients for x, alpha, z against plain-torch autograd."""

import pytest
import torch

from brainfm.kernels import fused_ash
from brainfm.kernels.reference import ash_ref

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1e-2)}


def _run(fn, x: torch.Tensor, alpha: float, z: float, gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    a = torch.tensor(alpha, device=x.device, requires_grad=True)
    zz = torch.tensor([z], device=x.device, requires_grad=True)  # shape (1,) like an nn.Parameter
    y = fn(x, a, zz)
    y.backward(gy)
    return y.detach(), x.grad, a.grad, zz.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 200), (13, 803), (4, 67, 200), (300, 97)])
def test_ash_forward_backward(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> None:
    x = torch.randn(*shape, device=device)
    x.view(-1, shape[-1])[-1] = 1.5  # constant row: sigma = sqrt(eps)
    x = x.to(dtype)
    gy = torch.randn_like(x)
    got = _run(fused_ash, x, 1.3, 0.4, gy)
    want = _run(ash_ref, x, 1.3, 0.4, gy)
    rtol, atol = TOL[dtype]
    for g, w in zip(got[:2], want[:2]):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)
    for g, w in zip(got[2:], want[2:]):  # scalar grads: sums over every element
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * x.numel() ** 0.5)


def test_ash_constant_rows_only(device: str) -> None:
    x = torch.full((6, 200), -2.0, device=device)
    x[3] = 0.0
    got = _run(fused_ash, x, 0.7, -1.1, torch.ones_like(x))
    want = _run(ash_ref, x, 0.7, -1.1, torch.ones_like(x))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_ash_rejects_vector_params() -> None:
    with pytest.raises(ValueError, match="one-element"):
        fused_ash(torch.randn(2, 8), torch.ones(2), torch.zeros(1))
