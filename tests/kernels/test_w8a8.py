"""W8A8 GEMM: SQNR floor against fp32, near-exact against the integer reference."""

import pytest
import torch

from brainfm.kernels import quantize_per_token, quantize_weight_per_channel, w8a8_linear, w8a8_linear_dynamic
from brainfm.kernels.reference import apply_activation_ref, sqnr_db, w8a8_linear_ref

SQNR_FLOOR_DB = 28.0  # int8 x int8 with per-token / per-channel scales; measured ~41-43 dB here
SHAPES = [(1, 200, 800), (13, 803, 97), (67, 800, 200), (300, 200, 800)]


def _problem(m: int, k: int, n: int, device: str) -> tuple[torch.Tensor, ...]:
    x = torch.randn(m, k, device=device)
    x[m // 2] = 0.0  # all-zero token: output is act(bias)
    w = torch.randn(n, k, device=device) / k**0.5
    b = torch.randn(n, device=device)
    return x, w, b


@pytest.mark.parametrize("activation", ["none", "gelu", "silu"])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_w8a8_matches_fp32_and_int_reference(m: int, k: int, n: int, activation: str, device: str) -> None:
    x, w, b = _problem(m, k, n, device)
    qx, sx = quantize_per_token(x)
    qw, sw = quantize_weight_per_channel(w)
    y = w8a8_linear(qx, sx, qw, sw, b, activation, torch.float32)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert sqnr_db(apply_activation_ref(x @ w.T + b, activation), y) >= SQNR_FLOOR_DB
    y_int = w8a8_linear_ref(qx, sx, qw, sw, b, activation)
    torch.testing.assert_close(y, y_int, rtol=1e-5, atol=1e-6 * float(y_int.abs().max()))
    torch.testing.assert_close(y[m // 2], apply_activation_ref(b, activation), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_w8a8_half_outputs_no_bias(out_dtype: torch.dtype, device: str) -> None:
    x, w, _ = _problem(67, 803, 97, device)
    qw, sw = quantize_weight_per_channel(w)
    y = w8a8_linear_dynamic(x.to(out_dtype), qw, sw)
    assert y.dtype == out_dtype and y.shape == (67, 97)
    qx, sx = quantize_per_token(x.to(out_dtype))
    y_int = w8a8_linear_ref(qx, sx, qw, sw, out_dtype=out_dtype)
    torch.testing.assert_close(y, y_int, rtol=1e-2, atol=1e-2)
    assert sqnr_db(x @ w.T, y.float()) >= SQNR_FLOOR_DB


def test_w8a8_leading_dims_and_validation() -> None:
    x, w, b = _problem(20, 200, 97, "cpu")
    qw, sw = quantize_weight_per_channel(w)
    y = w8a8_linear_dynamic(x.view(4, 5, 200), qw, sw, b, out_dtype=torch.float32)
    assert y.shape == (4, 5, 97)
    qx, sx = quantize_per_token(x)
    with pytest.raises(ValueError, match="activation"):
        w8a8_linear(qx, sx, qw, sw, b, "relu6")
    with pytest.raises(ValueError, match="K mismatch"):
        w8a8_linear(qx[:, :100], sx, qw, sw)
