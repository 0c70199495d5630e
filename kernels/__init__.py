"""Triton kernels for quantized deployment (installed as ``brainfm.kernels``).

Each op is three layers: a private ``@triton.jit`` kernel, a launcher registered as a
``torch.library`` custom op (``torch.ops.brainfm.*``, with a fake implementation for
``torch.compile``), and a pure-PyTorch reference in :mod:`brainfm.kernels.reference`
that the tests and ``benchmarks/bench_kernels.py`` share.

Dispatch, per call: CUDA tensors run the compiled kernels (autotuned for Hopper and
Ampere); CPU tensors run the Triton interpreter when ``TRITON_INTERPRET=1`` and the
reference otherwise.

==========================================  =============================================
``quantize_per_token(x)``                   int8 per-token activations + fp32 scales
``dequantize_per_token(q, s, dtype)``       inverse of the above
``quantize_weight_per_channel(w)``          int8 weight + per-output-channel scales
``w8a8_linear(qx, sx, qw, sw, ...)``        int8 GEMM, fused dequant/bias/activation
``w8a8_linear_dynamic(x, qw, sw, ...)``     quantize activations then ``w8a8_linear``
``quantize_weight_int4(w, group)``          packed int4 weight + group scales
``w4a16_linear(x, packed, s, group)``       int4-weight GEMM / split-K GEMV
``quantize_weight_int6(w)``                 densely packed int6 weight + channel scales
``w6a8_linear(qx, sx, packed, sw, ...)``    int6-weight x int8 GEMM / split-K GEMV (FlexQ)
``w6a8_linear_dynamic(x, packed, sw)``      quantize activations then ``w6a8_linear``
``adalog_quantize(x, thresholds)``          uint8 codes of a table quantizer (AdaLog)
``adalog_dequantize(codes, levels)``        inverse of the above (a gather)
``fused_ash(x, alpha, z, eps)``             fused ASH activation with backward (what
                                            ``brainfm.models.ASH`` runs on CUDA)
==========================================  =============================================
"""

from .adalog import adalog_dequantize, adalog_quantize
from .ash import ASHFunction, fused_ash
from .quant import dequantize_per_token, quantize_per_token
from .reference import pack_int4, pack_int6, unpack_int4, unpack_int6
from .w4a16 import quantize_weight_int4, w4a16_linear
from .w6a8 import quantize_weight_int6, w6a8_linear, w6a8_linear_dynamic
from .w8a8 import quantize_weight_per_channel, w8a8_linear, w8a8_linear_dynamic

__all__ = [
    "ASHFunction", "adalog_dequantize", "adalog_quantize", "fused_ash", "dequantize_per_token", "pack_int4",
    "pack_int6", "quantize_per_token", "quantize_weight_int4", "quantize_weight_int6", "quantize_weight_per_channel",
    "unpack_int4", "unpack_int6", "w4a16_linear", "w6a8_linear", "w6a8_linear_dynamic", "w8a8_linear",
    "w8a8_linear_dynamic",
]
