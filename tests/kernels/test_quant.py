"""Per-token int8 quantize / dequantize: bit-exact against the reference."""

import pytest
import torch

from brainfm.kernels import dequantize_per_token, quantize_per_token
from brainfm.kernels.reference import dequantize_per_token_ref, quantize_per_token_ref

SHAPES = [(1, 200), (13, 803), (67, 200), (300, 803), (300, 97)]


def _input(m: int, k: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.randn(m, k, device=device) * 3.0
    x[m // 2] = 0.0  # an all-zero row (the only row when m == 1)
    if m > 2:
        x[-1, :7] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 127.0, -127.0])  # ties after scaling
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", SHAPES)
def test_quantize_bit_exact(m: int, k: int, dtype: torch.dtype, device: str) -> None:
    x = _input(m, k, dtype, device)
    q, s = quantize_per_token(x)
    q_ref, s_ref = quantize_per_token_ref(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.equal(q, q_ref)
    assert torch.equal(s, s_ref)
    assert torch.equal(s[m // 2], torch.tensor(1.0, device=device)) and not q[m // 2].any()


def test_quantize_two_pass_long_rows(device: str) -> None:
    """Rows longer than one block (16384 under the interpreter) take the two-pass path."""
    x = torch.randn(3, 20000, device=device)
    x[1] = 0.0
    q, s = quantize_per_token(x)
    q_ref, s_ref = quantize_per_token_ref(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


def test_quantize_leading_dims(device: str) -> None:
    x = torch.randn(2, 5, 7, 200, device=device)
    q, s = quantize_per_token(x)
    assert q.shape == x.shape and s.shape == (2, 5, 7)
    q_ref, s_ref = quantize_per_token_ref(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", SHAPES)
def test_dequantize_bit_exact(m: int, k: int, out_dtype: torch.dtype, device: str) -> None:
    q, s = quantize_per_token_ref(_input(m, k, torch.float32, device))
    y = dequantize_per_token(q, s, out_dtype)
    assert y.dtype == out_dtype
    assert torch.equal(y, dequantize_per_token_ref(q, s, out_dtype))


def test_roundtrip_error_bounded(device: str) -> None:
    x = torch.randn(67, 803, device=device)
    q, s = quantize_per_token(x)
    err = (dequantize_per_token(q, s) - x).abs()
    assert torch.all(err <= s[:, None] / 2 * (1 + 1e-6))
