"""Deployment: post-training quantization, bundles and ONNX export of fine-tuned decoders.

=====================================  ===================================================
``calibration_batches(store, ...)``    real windows from a shard store (:mod:`brainfm.data`)
``calibrate(model, batches)``          per-linear activation statistics (forward hooks)
``quantize(decoder, scheme, batches)``  copy with W8A8 / W4A16 / W6A8 / mixed (``auto``) linears,
                                       optionally AdaLog attention and activations
``save_bundle(model, dir)``            safetensors + validated JSON, no pickle
``load(dir)``                          rebuild the quantized decoder from a bundle
``export_onnx(decoder, path)``         fp32 ONNX (dynamic batch, channels, window)
``quantize_onnx(src, dst, mode)``      int8 ONNX for onnxruntime CPU
``load_checkpoint(path)``              decoder from ``decoder.safetensors`` or a ``.ckpt``
``read_normalization(path)``           subject-normalisation statistics of a decoder file,
                                       bundle or ONNX model (:mod:`~brainfm.deploy.normalization`)
=====================================  ===================================================

Command line: ``brainfm quantize`` and ``brainfm export`` (:mod:`brainfm.deploy.commands`).
"""

from brainfm.data.sampling import calibration_batches
from brainfm.deploy.adalog import QuantActivation, QuantAttentionBlock, TableQuantizer
from brainfm.deploy.bundle import load, read_config, save_bundle
from brainfm.deploy.calibrate import LinearStats, calibrate
from brainfm.deploy.checkpoint import load_checkpoint, read_normalization
from brainfm.deploy.export import (DecoderGraph, EncoderGraph, export_graph, export_onnx, onnx_session, quantize_onnx,
                                   run_onnx)
from brainfm.deploy.qlinear import QuantLinear, W4A16Linear, W6A8Linear, W8A8Linear
from brainfm.deploy.quantize import quantizable_linears, quantize

__all__ = [
    "DecoderGraph", "EncoderGraph", "LinearStats", "QuantActivation", "QuantAttentionBlock", "QuantLinear",
    "TableQuantizer", "W4A16Linear", "W6A8Linear", "W8A8Linear", "calibrate", "calibration_batches",
    "export_graph", "export_onnx", "load", "load_checkpoint", "onnx_session", "quantizable_linears", "quantize",
    "quantize_onnx", "read_config", "read_normalization", "run_onnx", "save_bundle",
]
