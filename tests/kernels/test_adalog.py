"""AdaLog table quantizer: quantize and dequantize bit-exact against the reference."""

import math

import pytest
import torch

from brainfm.kernels import adalog_dequantize, adalog_quantize
from brainfm.kernels.reference import (ADALOG_R, adalog_tables, table_dequantize_ref, table_quantize_ref,
                                       uniform_tables)


def _probs(shape: tuple[int, ...], device: str) -> torch.Tensor:
    p = torch.softmax(torch.randn(*shape, device=device) * 3.0, dim=-1)
    p[..., 0, :3] = 0.0  # masked keys: exact zeros
    return p


@pytest.mark.parametrize("bits,q", [(3, 37), (4, 23), (4, 53), (8, 11)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 13, 13), (2, 7, 129)])
def test_adalog_quantize_bit_exact(bits: int, q: int, dtype: torch.dtype, shape: tuple[int, ...],
                                   device: str) -> None:
    t, v = adalog_tables(bits, q, 1.0)
    x = _probs(shape, device).to(dtype)
    codes = adalog_quantize(x, t)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert torch.equal(codes, table_quantize_ref(x, t.to(device)))
    assert int(codes.max()) <= 2**bits - 1
    y = adalog_dequantize(codes, v, dtype)
    assert y.dtype == dtype and torch.equal(y, table_dequantize_ref(codes, v.to(device), dtype))


def test_codes_are_rounded_adaptive_logs() -> None:
    """The thresholds round ``-log_a(x / s)`` to the nearest integer; past the last level, zero."""
    bits, q, s = 4, 29, 0.8
    t, v = adalog_tables(bits, q, s)
    x = torch.rand(5000).pow(6) * 0.9 + 1e-9  # power-law-like, some above the scale
    codes = adalog_quantize(x, t).long()
    exps = torch.round(-torch.log2(x.double() / s) * ADALOG_R / q).clamp_min(0)
    want = torch.where(exps > 2**bits - 2, torch.full_like(exps, 2**bits - 1), exps).long()
    assert (codes != want).sum() <= 2  # float32 thresholds vs float64 logs: ties only
    assert torch.equal(v[-1], torch.tensor(0.0)) and v[0] == pytest.approx(s)
    ratio = (v[1:-1] / v[:-2]).double()
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2 ** (-q / ADALOG_R)), rtol=1e-6, atol=0)


def test_shift_reparameterises_negative_gelu_outputs(device: str) -> None:
    """Post-GELU values reach -0.17: the shift makes them quantizable, zero code = -shift."""
    x = torch.nn.functional.gelu(torch.randn(64, 96, device=device) * 2)
    t, v = adalog_tables(4, 37, float(x.max()) + 0.17, shift=0.17)
    codes = adalog_quantize(x, t)
    assert torch.equal(codes, table_quantize_ref(x, t.to(device)))
    x_hat = adalog_dequantize(codes, v)
    assert float(x_hat.min()) >= -0.17 - 1e-6
    assert float((x_hat - x).abs().max()) <= 0.5 * float(x.max())  # the coarse top level bounds the error


@pytest.mark.parametrize("bits", [4, 8])
def test_uniform_tables_through_the_same_kernels(bits: int, device: str) -> None:
    x = torch.randn(33, 77, device=device)
    t, v = uniform_tables(bits, -1.5, 2.0)
    codes = adalog_quantize(x, t)
    assert torch.equal(codes, table_quantize_ref(x, t.to(device)))
    inside = (x >= -1.5) & (x <= 2.0)
    step = 3.5 / (2**bits - 1)
    err = (adalog_dequantize(codes, v) - x).abs()
    assert float(err[inside].max()) <= step / 2 * (1 + 1e-5)


def test_edge_values_and_validation(device: str) -> None:
    t, v = adalog_tables(4, 37, 1.0)
    x = torch.tensor([2.0, 1.0, 0.0, -1.0, float("inf"), -float("inf"), float(t[0]), float(t[-1])], device=device)
    codes = adalog_quantize(x, t)
    assert torch.equal(codes, table_quantize_ref(x, t.to(device)))
    assert codes[:6].tolist() == [0, 0, 15, 15, 0, 15]
    assert adalog_quantize(torch.empty(0, 3, device=device), t).shape == (0, 3)
    with pytest.raises(ValueError, match="thresholds"):
        adalog_quantize(x, t[:10])
    with pytest.raises(TypeError, match="uint8"):
        adalog_dequantize(codes.long(), v)
    with pytest.raises(ValueError):
        adalog_tables(9, 37, 1.0)
    # an 8-bit table whose smallest levels underflow float32 stays non-increasing and usable
    t8, _ = adalog_tables(8, 74, 1.0)
    assert bool((t8[1:] <= t8[:-1]).all()) and math.isfinite(float(t8[-1]))
