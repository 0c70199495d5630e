"""Quantized drop-in replacements for ``nn.Linear``, backed by :mod:`brainfm.kernels`.

Three schemes:

``w8a8`` (:class:`W8A8Linear`)
    int8 weights with one symmetric scale per output channel, and int8 activations
    quantized per token at run time (dynamic), as in SmoothQuant's W8A8 layout [1]_ and the
    vector-wise quantization of LLM.int8() [2]_ (without its fp16 outlier path). The GEMM
    accumulates in int32 and dequantizes, adds the bias and (optionally) applies GELU/SiLU in
    its epilogue (:func:`brainfm.kernels.w8a8_linear_dynamic`).
``w4a16`` (:class:`W4A16Linear`)
    Weight-only: signed int4 weights packed two per byte, one symmetric fp16 scale per group
    of ``group_size`` consecutive input features of each output channel (the group-wise
    round-to-nearest format of GPTQ [3]_ and AWQ [4]_), activations stay in float
    (:func:`brainfm.kernels.w4a16_linear`). ``in_features`` need not be a multiple of the
    group: the last group of a row is shorter (the kernels zero-pad it), and a layer with
    fewer inputs than ``group_size`` has one group per row.

``w6a8`` (:class:`W6A8Linear`)
    FlexQ-style [5]_: int6 weights with one symmetric scale per output channel, packed four
    per three bytes, and dynamic per-token int8 activations; the integer GEMM and its
    epilogue are W8A8's (:func:`brainfm.kernels.w6a8_linear_dynamic`).

All layers can carry a per-input-channel ``smooth`` vector that multiplies the activation
before the GEMM: ``y = W' (x * smooth)`` with ``W' = W diag(1 / smooth)``. It is how
SmoothQuant's migration (and AWQ's activation-aware scaling) is applied here; see
:mod:`brainfm.deploy.smooth` for the trade-off against folding it into the previous op.

Dispatch follows the kernels: CUDA tensors run the Triton kernels, CPU tensors the
pure-PyTorch references (or the Triton interpreter under ``TRITON_INTERPRET=1``).

References
----------
.. [1] G. Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
   Large Language Models", ICML 2023.
.. [2] T. Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at
   Scale", NeurIPS 2022.
.. [3] E. Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
   Pre-trained Transformers", ICLR 2023.
.. [4] J. Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
   Acceleration", MLSys 2024.
.. [5] "FlexQ: Efficient Post-training INT6 Quantization for LLM Serving via
   Algorithm-System Co-Design", 2025, arXiv:2508.04405.
"""

from __future__ import annotations

import torch
from torch import nn

from brainfm.kernels import (quantize_weight_int4, quantize_weight_int6, quantize_weight_per_channel, w4a16_linear,
                             w6a8_linear_dynamic, w8a8_linear_dynamic)
from brainfm.kernels.reference import ACTIVATIONS, dequantize_int4_ref, unpack_int6

SCHEMES = ("w8a8", "w4a16", "w6a8")
#: Nominal weight bits of each layer kind (the sensitivity budget counts these).
WEIGHT_BITS = {"w4a16": 4, "w6a8": 6, "w8a8": 8}
GROUP_SIZES = (32, 64, 128)


class QuantLinear(nn.Module):
    """Common part of the quantized linears: shapes, bias and the optional smoothing vector.

    Subclasses register their weight buffers and implement :meth:`forward` and
    :meth:`dequantized_weight`. Every tensor is a buffer, so the state dict is what a
    bundle stores.
    """

    scheme: str = ""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("smooth", torch.ones(in_features) if smooth else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, smooth: torch.Tensor | None = None, **options) -> "QuantLinear":
        """Quantize ``linear``; ``smooth`` (``(in_features,)``) is the activation multiplier, and
        ``options`` are the subclass's own keyword arguments (``activation``, ``group_size``).

        The weight quantized is ``W diag(1 / smooth)``, so that ``W' (x * smooth) = W x``
        before rounding.
        """
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, smooth is not None, **options)
        if smooth is not None:
            w = w / smooth.float()[None, :]
            layer.smooth.copy_(smooth.float())
        layer._store_weight(w)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def _store_weight(self, w: torch.Tensor) -> None:
        """Quantize the float ``(out_features, in_features)`` weight into this layer's buffers."""
        raise NotImplementedError

    def _smoothed(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.smooth is None else x * self.smooth.to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The float ``(out_features, in_features)`` weight this layer computes with."""
        raise NotImplementedError

    def spec(self) -> dict:
        """JSON description of the layer (stored in a bundle's config)."""
        return {"kind": self.scheme, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "smooth": self.smooth is not None}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, smooth={self.smooth is not None}")


class IntActivationLinear(QuantLinear):
    """Common part of the layers with dynamic int8 activations (W8A8, W6A8): the activation
    fused into the GEMM epilogue, one of :data:`brainfm.kernels.reference.ACTIVATIONS`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False,
                 activation: str = "none") -> None:
        super().__init__(in_features, out_features, bias, smooth)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation

    def spec(self) -> dict:
        return {**super().spec(), "activation": self.activation}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"


class W8A8Linear(IntActivationLinear):
    """``act(quant(x * smooth) @ qweight.T * scales + bias)`` with int8 weights and activations.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    smooth : bool
        Whether the layer has a SmoothQuant activation multiplier.
    activation : {'none', 'gelu', 'silu'}
        Activation fused into the GEMM epilogue (the module that followed the linear is
        then an ``nn.Identity``).
    """

    scheme = "w8a8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False,
                 activation: str = "none") -> None:
        super().__init__(in_features, out_features, bias, smooth, activation)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_features))

    def _store_weight(self, w: torch.Tensor) -> None:
        qw, sw = quantize_weight_per_channel(w)
        self.qweight.copy_(qw)
        self.w_scale.copy_(sw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return w8a8_linear_dynamic(self._smoothed(x), self.qweight, self.w_scale, self.bias, self.activation,
                                   out_dtype=x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.w_scale[:, None]


class W4A16Linear(QuantLinear):
    """``(x * smooth) @ dequant(packed, scales).T + bias`` with group-wise int4 weights.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    smooth : bool
        Whether the layer has an AWQ-style activation multiplier.
    group_size : int
        Input features per scale (64 or 128 as in GPTQ/AWQ; 32 for very narrow models).
    """

    scheme = "w4a16"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False,
                 group_size: int = 64) -> None:
        super().__init__(in_features, out_features, bias, smooth)
        if group_size not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")
        self.group_size = int(group_size)
        self.register_buffer("packed", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, -(-in_features // group_size), dtype=torch.float16))

    def _store_weight(self, w: torch.Tensor) -> None:
        """Round to nearest, symmetric int4 per group."""
        packed, scales = quantize_weight_int4(w, self.group_size)
        self.packed.copy_(packed)
        self.scales.copy_(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return w4a16_linear(self._smoothed(x), self.packed, self.scales, self.group_size, bias)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int4_ref(self.packed, self.scales, self.in_features, self.group_size)

    def spec(self) -> dict:
        return {**super().spec(), "group_size": self.group_size}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


class W6A8Linear(IntActivationLinear):
    """``act(quant(x * smooth) @ unpack(packed).T * w_scale + bias)``: int6 weights, int8 activations.

    Parameters as :class:`W8A8Linear`; the weight is ``packed`` uint8 ``(N, 3 * ceil(K / 4))``.
    """

    scheme = "w6a8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False,
                 activation: str = "none") -> None:
        super().__init__(in_features, out_features, bias, smooth, activation)
        self.register_buffer("packed", torch.zeros(out_features, 3 * -(-in_features // 4), dtype=torch.uint8))
        self.register_buffer("w_scale", torch.ones(out_features))

    def _store_weight(self, w: torch.Tensor) -> None:
        """Round to nearest, symmetric int6 per output channel."""
        packed, scale = quantize_weight_int6(w)
        self.packed.copy_(packed)
        self.w_scale.copy_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return w6a8_linear_dynamic(self._smoothed(x), self.packed, self.w_scale, self.bias, self.activation,
                                   out_dtype=x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return unpack_int6(self.packed, self.in_features).float() * self.w_scale[:, None]


def build_quant_linear(spec: dict) -> QuantLinear:
    """An empty (zero-weight) quantized layer from its :meth:`QuantLinear.spec`, for loading."""
    common = dict(in_features=spec["in_features"], out_features=spec["out_features"], bias=spec["bias"],
                  smooth=spec["smooth"])
    if spec["kind"] == "w8a8":
        return W8A8Linear(**common, activation=spec.get("activation", "none"))
    if spec["kind"] == "w4a16":
        return W4A16Linear(**common, group_size=spec["group_size"])
    if spec["kind"] == "w6a8":
        return W6A8Linear(**common, activation=spec.get("activation", "none"))
    raise ValueError(f"unknown quantized layer kind {spec['kind']!r}; expected one of {SCHEMES}")
