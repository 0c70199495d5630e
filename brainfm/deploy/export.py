"""ONNX export of a :class:`~brainfm.models.BrainDecoder`, and int8 quantization for onnxruntime.

Export. ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript, opset 20):
the TorchScript exporter of torch 2.11 cannot export ``aten::fft_rfft`` (the spectral
branch), the dynamo exporter lowers it to ONNX ``DFT``. The graph is :class:`DecoderGraph`:
the decoder's own modules in its order, minus what does not trace (the encoder's input
validation reads tensor values with ``nonzero().tolist()``, and the decoder skips the
spatial attention mask when no channel is padded, a value-dependent branch): it always
passes ``channel_mask`` to the blocks, which gives the same result. The graph is the shared
model, what an unseen subject gets, unless the decoder has a ``deploy_subject``
(``brainfm export --subject``): then that subject's FiLM (and its channel mixing, when trained,
which fixes the channel count to the subject's) is part of the graph. Inputs:

==================  ===========================  ======================================
name                shape                        dtype
==================  ===========================  ======================================
``x``               (batch, channels, 200*S)     float32, physical units (uV, fT, fT/cm)
``sensor_geometry`` (batch, channels, 6)         float32
``sensor_type``     (batch, channels)            int64
``channel_mask``    (batch, channels)            bool
==================  ===========================  ======================================

with batch, channels and the number of patches ``S`` (1 to ``max_patches``) dynamic;
output ``logits`` (batch, n_classes).

A decoder trained on subject-normalised windows takes windows normalised the same way
(:mod:`brainfm.data.normalize`); the file carries the method and statistics in its
``metadata_props`` (:mod:`brainfm.deploy.normalization`, key ``brainfm.normalization``), a graph
exported for one subject names it (``brainfm.deploy_subject``), the training window length goes
in ``brainfm.window_s``, and :func:`quantize_onnx` copies all three into the int8 file.

Int8. :func:`quantize_onnx` runs onnxruntime's post-training quantization on the weight
GEMMs only (``MatMul``/``Gemm`` nodes with a constant weight; attention's activation x
activation products, convolutions, norms and the DFT stay float), with the same
``min_features`` rule as :func:`brainfm.deploy.quantize`:

``dynamic`` (default)
    ``quantize_dynamic``: int8 per-channel weights, activations quantized per tensor at run
    time (``DynamicQuantizeLinear`` + ``MatMulInteger``). No calibration data.
``static``
    ``quantize_static`` in QDQ format: per-channel int8 weights and per-tensor int8
    activations whose ranges come from real calibration windows (min-max). Portable to
    QDQ-consuming runtimes; on onnxruntime CPU measured slower than ``dynamic`` (see
    ``docs/benchmarks.md``).

Weights are quantized to 7 bits (``reduce_range=True``) by default. x86 CPUs without VNNI
(AVX2 only) multiply uint8 activations by int8 weights with ``vpmaddubsw``, which sums two
products into a saturating int16: ``2·255·127 > 32767``. With 7-bit weights the largest
pair, ``2·255·63 = 32130``, cannot saturate, so one quantized file gives the same logits on
every CPU. Measured on the fine-tuned EEGMAT decoder of ``tests/test_deploy.py`` (logits
SQNR against fp32, ORT 1.32, AVX-512 VNNI host against the same binary under
``qemu-x86_64 -cpu Haswell``): 8-bit dynamic 52.2 dB with VNNI but 27.3 dB without,
7-bit dynamic 46.2 dB on both. ``reduce_range=False`` buys those 6 dB on VNNI-only fleets.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from brainfm.deploy.normalization import ONNX_SUBJECT_KEY, onnx_properties, onnx_window_s, read_onnx, write_onnx

INPUT_NAMES = ("x", "sensor_geometry", "sensor_type", "channel_mask")
OUTPUT_NAME = "logits"
OPSET = 20
INT8_MODES = ("dynamic", "static")


def encoder_tokens(encoder: nn.Module, x: torch.Tensor, sensor_geometry: torch.Tensor,
                   sensor_type: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
    """``BrainEncoder.forward`` (brainfm's tokenizer and blocks) without its input validation, whose
    data-dependent checks (an empty channel mask, a non-finite position, an unknown type) cannot be
    traced: tokens (B, C, S, D)."""
    sensor_type = torch.where(channel_mask, sensor_type, torch.zeros_like(sensor_type))
    tokens = encoder.tokenizer(x, sensor_geometry, sensor_type, channel_mask)  # (B, C, S, D)
    for block in encoder.blocks:
        tokens = block(tokens, channel_mask)  # (B, C, S, D)
    return encoder.norm(tokens) * channel_mask[:, :, None, None].to(tokens.dtype)


class EncoderGraph(nn.Module):
    """The traceable forward of a :class:`~brainfm.models.BrainEncoder`:
    ``(x, geometry, type, mask) -> tokens (B, C, S, D)``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, sensor_geometry: torch.Tensor, sensor_type: torch.Tensor,
                channel_mask: torch.Tensor) -> torch.Tensor:
        return encoder_tokens(self.encoder, x, sensor_geometry, sensor_type, channel_mask)


class DecoderGraph(nn.Module):
    """The traceable forward of a decoder, ``(x, geometry, type, mask) -> logits``: its shared
    model, or its ``deploy_subject``'s (that subject's mixing and FiLM around the trunk)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        if getattr(decoder, "n_features", 0):
            raise ValueError("a decoder with a hybrid head is not exported: its features are computed outside "
                             "the model (brainfm.targets), so the graph would lack an input")
        if not hasattr(decoder.encoder, "tokenizer"):
            raise ValueError(f"a decoder on a {type(decoder.encoder).__name__} trunk is not exported "
                             "(only brainfm's own encoder is)")
        self.decoder = decoder
        subject = getattr(decoder, "deploy_subject", None)
        self.adapter = None if subject is None else decoder.subjects.get(subject)
        #: the subject's channel count when its mixing was trained (identity mixing is left out)
        self.mix_channels = (self.adapter.n_channels if self.adapter is not None
                             and bool(self.adapter.mix_delta.detach().abs().max() > 0) else None)

    def forward(self, x: torch.Tensor, sensor_geometry: torch.Tensor, sensor_type: torch.Tensor,
                channel_mask: torch.Tensor) -> torch.Tensor:
        if self.mix_channels is not None:
            x = x + torch.einsum("ij,njt->nit", self.adapter.mix_delta, x)  # (B, C_s, T): I + Δ_s
        tokens = encoder_tokens(self.decoder.encoder, x, sensor_geometry, sensor_type, channel_mask)
        if self.adapter is not None:
            tokens = self.adapter.modulate(tokens)  # (B, C, S, D): γ_s ⊙ z + β_s
        return self.decoder.head(tokens, channel_mask)  # (B, n_classes)


def example_inputs(config: Any, batch: int = 2, n_channels: int = 19, seconds: float = 4.0,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Synthetic EEG-like inputs (20 uV noise, electrodes on a 9.5-cm sphere) for tracing and timing."""
    g = torch.Generator().manual_seed(seed)
    t = int(round(seconds * config.sfreq))
    pos = torch.randn(n_channels, 3, generator=g)
    pos = pos / pos.norm(dim=1, keepdim=True) * 0.095
    geometry = torch.cat([pos, torch.zeros_like(pos)], 1).expand(batch, n_channels, 6).contiguous()
    return (torch.randn(batch, n_channels, t, generator=g) * 20.0, geometry,
            torch.zeros(batch, n_channels, dtype=torch.long), torch.ones(batch, n_channels, dtype=torch.bool))


def export_onnx(decoder: nn.Module, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Export ``decoder`` (float) to a single-file ONNX model at ``path``.

    Batch, channel count and window length (in whole patches) are dynamic, except the channel
    count of a ``deploy_subject`` with trained channel mixing (the subject's own).
    """
    graph = DecoderGraph(decoder)
    path = export_graph(graph, decoder.config, path, OUTPUT_NAME, opset, channels=graph.mix_channels)
    normalization, subject = getattr(decoder, "normalization", None), getattr(decoder, "deploy_subject", None)
    window_s = getattr(decoder, "window_s", None)
    if normalization is not None or subject is not None or window_s is not None:
        write_onnx(path, normalization, subject, window_s)
    return path


def export_graph(graph: nn.Module, config: Any, path: str | os.PathLike, output_name: str = OUTPUT_NAME,
                 opset: int = OPSET, channels: int | None = None) -> Path:
    """Export ``graph`` (:class:`DecoderGraph` or :class:`EncoderGraph` of a model built from
    ``config``) to a single-file ONNX model at ``path``, with dynamic batch, channel count and
    window length (in whole patches): what ``brainfm export`` ships. ``channels``: a fixed
    channel count instead (a subject's trained channel mixing)."""
    from torch.export import Dim  # noqa: PLC0415

    batch = Dim("batch")
    n_channels = Dim("channels") if channels is None else channels
    patches = Dim("patches", min=1, max=config.max_patches)
    dims = {k: {0: batch} | ({1: n_channels} if channels is None else {}) for k in INPUT_NAMES}
    dims["x"] = dims["x"] | {2: config.patch_size * patches}
    # batch 2 at trace time: torch.export specialises dimensions that are 1
    example = example_inputs(config, batch=2, n_channels=channels or 5, seconds=2 * config.patch_seconds)
    # The exporter logs one warning per torchvision op it cannot register (torchvision is not
    # a dependency), warns that a Dim shared by several inputs keeps one axis name, and its
    # pytree code warns about LeafSpec; none of it concerns this graph.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used", category=UserWarning)
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(graph.eval(), example, dynamo=True, dynamic_shapes=dims,
                                        input_names=list(INPUT_NAMES), output_names=[output_name],
                                        opset_version=opset, verbose=False)
    finally:
        registration_log.setLevel(level)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(os.fspath(path), external_data=False)
    return path


#: Weights (by name fragment) whose GEMM static int8 leaves in float: the linear-spectrum
#: projection of the patch embedding reads |rFFT| magnitudes whose low-frequency bins are 100x
#: the high-frequency ones, and one per-tensor int8 activation scale rounds the small bins to 0.
#: Measured on the deploy test's decoder (tiny, with the log-power branch): logits SQNR 27.7 dB
#: with it quantized, 58.3 dB with it in float; keeping the log-power projection in float
#: instead leaves 27.0 dB. Dynamic int8 scales activations per batch and quantizes it too.
STATIC_FLOAT: tuple[str, ...] = ("patch_embedding.spectral_proj.",)


def weight_gemm_nodes(model: Any, min_features: int = 8, keep_float: Sequence[str] = ()) -> list[str]:
    """Names of ``MatMul``/``Gemm`` nodes of an ONNX model with a constant 2-D weight of at
    least ``min_features`` inputs and outputs (the nodes :func:`quantize_onnx` quantizes),
    except those whose weight name contains one of ``keep_float``."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if any(fragment in node.input[1] for fragment in keep_float):
            continue
        shape = inits[node.input[1]]
        if len(shape) == 2 and min(shape) >= min_features:
            names.append(node.name)
    return names


def _reader(batches: Iterable[dict[str, Any]], n_windows: int):
    """An onnxruntime ``CalibrationDataReader`` over the first ``n_windows`` of brainfm batches."""
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches, self.seen = iter(batches), 0

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None) if self.seen < n_windows else None
            if batch is None:
                return None
            take = min(len(batch["x"]), n_windows - self.seen)
            self.seen += take
            return {k: batch[k][:take].numpy() for k in INPUT_NAMES}

    return BatchReader()


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, mode: str = "dynamic",
                  calib_batches: Iterable[dict[str, Any]] | None = None, n_windows: int = 256,
                  min_features: int = 8, reduce_range: bool = True) -> Path:
    """Int8-quantize the weight GEMMs of the float ONNX model ``src`` into ``dst``.

    Parameters
    ----------
    mode : {'dynamic', 'static'}
        See the module docstring; ``static`` needs ``calib_batches``.
    calib_batches : iterable of dict, optional
        Batches of :func:`brainfm.data.collate_windows` (static calibration).
    reduce_range : bool
        7-bit weights, exact on CPUs without VNNI (see the module docstring).
    """
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    if mode not in INT8_MODES:
        raise ValueError(f"mode must be one of {INT8_MODES}, got {mode!r}")
    if mode == "static" and calib_batches is None:
        raise ValueError("static int8 quantization needs calibration windows (calib_batches)")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # onnxruntime's recommended pre-processing: ONNX shape inference and graph optimisation
        # (its symbolic shape inference cannot follow the DFT of the spectral branch; skipped)
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(os.fspath(src), pre, skip_symbolic_shape=True)
        nodes = weight_gemm_nodes(onnx.load(pre), min_features, STATIC_FLOAT if mode == "static" else ())
        common = dict(per_channel=True, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                      op_types_to_quantize=["MatMul", "Gemm"], reduce_range=reduce_range)
        if mode == "dynamic":
            quantize_dynamic(pre, os.fspath(dst), **common)
        else:
            quantize_static(pre, os.fspath(dst), _reader(calib_batches, n_windows), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, **common)
    props, where = onnx_properties(src)
    normalization, subject, window_s = read_onnx(src), props.get(ONNX_SUBJECT_KEY), onnx_window_s(props, where)
    if normalization is not None or subject is not None or window_s is not None:
        write_onnx(dst, normalization, subject, window_s)  # onnxruntime's quantizers drop metadata_props
    return dst


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU ``InferenceSession`` (``threads`` intra-op threads, default: runtime's)."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: torch.Tensor, sensor_geometry: torch.Tensor, sensor_type: torch.Tensor,
             channel_mask: torch.Tensor) -> torch.Tensor:
    """Logits of an onnxruntime session for torch inputs."""
    feeds = dict(zip(INPUT_NAMES, (t.detach().cpu().numpy() for t in (x, sensor_geometry, sensor_type,
                                                                        channel_mask))))
    return torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])
