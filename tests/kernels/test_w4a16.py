"""W4A16: int4 packing bit-exact, SQNR floor against fp32, near-exact against dequant+matmul."""

import pytest
import torch

from brainfm.kernels import pack_int4, quantize_weight_int4, unpack_int4, w4a16_linear
from brainfm.kernels.reference import dequantize_int4_ref, sqnr_db, w4a16_linear_ref

# Symmetric int4 (absmax / 7) on gaussian weights: step ~ 2.5 sigma / 7 for group 64, so the
# weight (and output) SQNR is ~19.5 dB; group 128 has a larger absmax, ~18.7 dB.
SQNR_FLOOR_DB = {64: 18.0, 128: 17.5}
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1e-2)}


@pytest.mark.parametrize("k", [1, 2, 7, 200, 803])
def test_pack_unpack_roundtrip(k: int) -> None:
    q = torch.randint(-8, 8, (5, k), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (k + 1) // 2)
    assert torch.equal(unpack_int4(packed, k), q)


def test_pack_layout() -> None:
    """Low nibble = even k, high nibble = odd k, two's complement; odd K pads a zero nibble."""
    q = torch.tensor([[-8, 7, -1, 0, 3]], dtype=torch.int8)
    assert pack_int4(q).tolist() == [[0x78, 0x0F, 0x03]]
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([[8, 0]], dtype=torch.int8))


@pytest.mark.parametrize("group", [64, 128])
def test_quantize_weight_int4(group: int) -> None:
    w = torch.randn(97, 803)
    w[3] = 0.0
    packed, scales = quantize_weight_int4(w, group)
    assert scales.shape == (97, -(-803 // group)) and scales.dtype == torch.float16
    w_hat = dequantize_int4_ref(packed, scales, 803, group)
    step = scales.float().repeat_interleave(group, dim=1)[:, :803]
    assert torch.all((w_hat - w).abs() <= step / 2 + 1e-3 * step)
    assert not w_hat[3].any()
    assert sqnr_db(w, w_hat) >= SQNR_FLOOR_DB[group]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n,group", [
    (1, 200, 800, 64), (5, 803, 97, 128), (16, 803, 800, 64),  # split-K GEMV path
    (17, 200, 97, 64), (67, 803, 200, 128),  # tiled GEMM path
])
def test_w4a16_linear(m: int, k: int, n: int, group: int, dtype: torch.dtype, device: str) -> None:
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device) / k**0.5
    b = torch.randn(n, device=device) * 0.1
    packed, scales = quantize_weight_int4(w, group)
    y = w4a16_linear(x.to(dtype), packed, scales, group, b)
    assert y.shape == (m, n) and y.dtype == dtype
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y, w4a16_linear_ref(x.to(dtype), packed, scales, group, b), rtol=rtol, atol=atol)
    assert sqnr_db(x.to(dtype).float() @ w.T + b, y.float()) >= SQNR_FLOOR_DB[group]


def test_w4a16_validation() -> None:
    packed, scales = quantize_weight_int4(torch.randn(8, 128), 64)
    with pytest.raises(ValueError, match="packed"):
        w4a16_linear(torch.randn(2, 64), packed, scales, 64)
    with pytest.raises(ValueError, match="scales"):
        w4a16_linear(torch.randn(2, 128), packed, scales, 128)
