"""Triton kernels for quantized deployment (installed as ``brainfm.kernels``).

Each op is three layers: a private ``@triton.jit`` kernel, a launcher registered as a
``torch.library`` custom op (``torch.ops.brainfm.*``, with a fake implementation for
``torch.compile``), and a pure-PyTorch reference in :mod:`brainfm.kernels.reference`
that the tests and ``benchmarks/bench_kernels.py`` share.

Dispatch, per call: CUDA tensors run the compiled kernels (autotuned for Hopper and
Ampere); CPU tensors run the Triton interpreter when ``TRITON_INTERPRET=1`` and the
reference otherwise.

======================================  =============================================
``quantize_per_token(x)``               int8 per-token activations + fp32 scales
``dequantize_per_token(q, s, dtype)``   inverse of the above
``quantize_weight_per_channel(w)``      int8 weight + per-output-channel scales
``w8a8_linear(qx, sx, qw, sw, ...)``    int8 GEMM, fused dequant/bias/activation
``w8a8_linear_dynamic(x, qw, sw, ...)`` quantize activations then ``w8a8_linear``
``quantize_weight_int4(w, group)``      packed int4 weight + group scales
``w4a16_linear(x, packed, s, group)``   int4-weight GEMM / split-K GEMV
``fused_ash(x, alpha, z, eps)``         fused ASH activation with backward (what
                                        ``brainfm.models.ASH`` runs on CUDA)
======================================  =============================================
"""

from .ash import ASHFunction, fused_ash
from .quant import dequantize_per_token, quantize_per_token
from .reference import pack_int4, unpack_int4
from .w4a16 import quantize_weight_int4, w4a16_linear
from .w8a8 import quantize_weight_per_channel, w8a8_linear, w8a8_linear_dynamic

__all__ = [
    "ASHFunction", "fused_ash", "dequantize_per_token", "pack_int4", "quantize_per_token",
    "quantize_weight_int4", "quantize_weight_per_channel", "unpack_int4", "w4a16_linear",
    "w8a8_linear", "w8a8_linear_dynamic",
]
