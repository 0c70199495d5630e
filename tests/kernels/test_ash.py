"""Fused ASH: forward allclose and gradients for x, alpha, z against plain-torch autograd."""

import pytest
import torch

from brainfm.kernels import fused_ash
from brainfm.models import ASH
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



@pytest.mark.parametrize("shape", [(3, 7, 200), (64, 32)])
def test_ash_module_matches_the_reference(shape: tuple[int, ...], device: str) -> None:
    """``brainfm.models.ASH`` runs the fused kernel on CUDA and the PyTorch formula on CPU;
    both match :func:`ash_ref` in the output and the gradients of x, alpha and z."""
    ash = ASH(shape[-1], alpha=1.3, z=0.4).to(device)
    x = torch.randn(*shape, device=device)
    x.view(-1, shape[-1])[0] = -0.5  # constant row: sigma = sqrt(eps)
    assert ash.uses_fused_kernel(x) == (device == "cuda")
    gy = torch.randn_like(x)
    xm = x.clone().requires_grad_()
    y = ash(xm)
    y.backward(gy)
    xr = x.clone().requires_grad_()
    alpha = torch.tensor(1.3, device=device, requires_grad=True)
    z = torch.tensor(0.4, device=device, requires_grad=True)
    want = ash_ref(xr, alpha, z, ash.eps)
    want.backward(gy)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xm.grad, xr.grad, rtol=1e-5, atol=1e-5)
    for got, ref in ((ash.alpha.grad, alpha.grad), (ash.z.grad, z.grad)):  # sums over every element
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * x.numel() ** 0.5)


def test_ash_module_fused_path_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's fused branch (taken on CUDA) on CPU tensors through the Triton interpreter."""
    monkeypatch.setattr(ASH, "uses_fused_kernel", lambda self, x: True)
    ash = ASH(96, alpha=0.8, z=-0.3)
    x = torch.randn(5, 96, requires_grad=True)
    y = ash(x)
    y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    alpha = torch.tensor(0.8, requires_grad=True)
    z = torch.tensor(-0.3, requires_grad=True)
    ash_ref(xr, alpha, z, ash.eps).sum().backward()
    torch.testing.assert_close(y, ash_ref(x.detach(), alpha.detach(), z.detach(), ash.eps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ash.alpha.grad, alpha.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ash.z.grad, z.grad, rtol=1e-4, atol=1e-3)
