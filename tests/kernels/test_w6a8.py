"""W6A8: int6 packing bit-exact, integer-exact against the reference, SQNR floor from 6-bit RTN."""

import math

import pytest
import torch

from brainfm.kernels import (pack_int6, quantize_per_token, quantize_weight_int6, unpack_int6, w6a8_linear,
                             w6a8_linear_dynamic)
from brainfm.kernels.reference import apply_activation_ref, quantize_weight_int6_ref, sqnr_db, w6a8_linear_ref

# The floor, derived from 6-bit round-to-nearest. A symmetric per-channel int6 weight has the
# step d = max|w| / 31 and a uniform rounding error of variance d**2 / 12, so on gaussian rows
# of std sigma the weight SQNR is 10 log10(12 * 31**2 / (max|w| / sigma)**2). The expected
# max of |N(0, 1)| over K = 803 samples is ~3.2, giving 30.5 dB (31.5 dB at K = 200); the
# int8 per-token activations (~42 dB) add a little noise on top, and the output of x @ W.T
# inherits the weight SQNR. 27 dB leaves ~3 dB for the spread of max|w| over rows.
RTN6_MAX_OVER_SIGMA = 3.2
SQNR_FLOOR_DB = 10 * math.log10(12 * 31**2 / RTN6_MAX_OVER_SIGMA**2) - 3.5  # = 27.0 dB


@pytest.mark.parametrize("k", [1, 3, 4, 7, 200, 803])
def test_pack_unpack_roundtrip(k: int) -> None:
    q = torch.randint(-32, 32, (5, k), dtype=torch.int8)
    packed = pack_int6(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 3 * -(-k // 4))
    assert torch.equal(unpack_int6(packed, k), q)


def test_pack_layout() -> None:
    """Four 6-bit two's-complement fields per 24-bit little-endian word; zero fields pad K."""
    q = torch.tensor([[-32, 31, -1, 0, 5]], dtype=torch.int8)
    # word 0 = 0x20 | 0x1F << 6 | 0x3F << 12 | 0 << 18 = 0x03F7E0; word 1 = 5
    assert pack_int6(q).tolist() == [[0xE0, 0xF7, 0x03, 0x05, 0x00, 0x00]]
    with pytest.raises(ValueError):
        pack_int6(torch.tensor([[32]], dtype=torch.int8))


def test_quantize_weight_int6_rtn() -> None:
    w = torch.randn(97, 803)
    w[3] = 0.0
    packed, scale = quantize_weight_int6(w)
    q, s_ref = quantize_weight_int6_ref(w)
    assert torch.equal(unpack_int6(packed, 803), q) and torch.equal(scale, s_ref)
    w_hat = q.float() * scale[:, None]
    assert torch.all((w_hat - w).abs() <= scale[:, None] / 2 * (1 + 1e-6))
    assert not w_hat[3].any() and scale[3] == 1.0
    assert sqnr_db(w, w_hat) >= SQNR_FLOOR_DB + 2.0


@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("m,k,n", [
    (1, 200, 97), (5, 803, 130), (16, 7, 33),  # split-K GEMV path (odd K and N)
    (17, 803, 97), (67, 200, 800), (130, 33, 5),  # tiled GEMM path
])
def test_w6a8_linear(m: int, k: int, n: int, activation: str, device: str) -> None:
    x = torch.randn(m, k, device=device)
    x[m // 2] = 0.0  # all-zero token: output is act(bias)
    w = torch.randn(n, k, device=device) / k**0.5
    b = torch.randn(n, device=device) * 0.1
    packed, sw = quantize_weight_int6(w)
    qx, sx = quantize_per_token(x)
    y = w6a8_linear(qx, sx, packed, sw, b, activation, torch.float32)
    assert y.shape == (m, n) and y.dtype == torch.float32
    y_int = w6a8_linear_ref(qx, sx, packed, sw, b, activation)
    torch.testing.assert_close(y, y_int, rtol=1e-5, atol=1e-6 * float(y_int.abs().max()))
    torch.testing.assert_close(y[m // 2], apply_activation_ref(b, activation), rtol=1e-6, atol=1e-6)
    if k >= 200:  # the statistical floor needs enough terms per output
        want = apply_activation_ref(x @ w.T + b, activation)
        assert sqnr_db(want, y) >= SQNR_FLOOR_DB
        # and within 1 dB of weight-only 6-bit RTN on the same problem: int8 activations cost little
        q, s = quantize_weight_int6_ref(w)
        rtn = apply_activation_ref(x @ (q.float() * s[:, None]).T + b, activation)
        assert sqnr_db(want, y) >= sqnr_db(want, rtn) - 1.0


def test_w6a8_half_output_and_validation() -> None:
    x = torch.randn(3, 5, 200)
    packed, sw = quantize_weight_int6(torch.randn(64, 200) / 200**0.5)
    y = w6a8_linear_dynamic(x.bfloat16(), packed, sw)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 5, 64)
    qx, sx = quantize_per_token(x)
    with pytest.raises(ValueError, match="packed"):
        w6a8_linear(qx[..., :100], sx, packed, sw)
    with pytest.raises(ValueError, match="activation"):
        w6a8_linear(qx, sx, packed, sw, None, "relu")
    with torch._subclasses.fake_tensor.FakeTensorMode():
        out = torch.ops.brainfm.w6a8_linear(torch.empty(4, 200, dtype=torch.int8), torch.empty(4),
                                            torch.empty(64, 150, dtype=torch.uint8), torch.empty(64), None,
                                            "none", torch.float16)
        assert out.shape == (4, 64) and out.dtype == torch.float16
