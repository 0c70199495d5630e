"""Quantized-model bundles: safetensors weights plus a validated JSON config, never pickle.

Layout (``brainfm-quantized`` format, version 3; versions 1 and 2 still load): a directory holding

``weights.safetensors``
    The quantized decoder's state dict: float tensors of the layers kept in float, and for
    each quantized linear its buffers (``qweight`` int8 ``(N, K)`` + ``w_scale`` float32
    ``(N,)`` for ``w8a8``; ``packed`` uint8 ``(N, ceil(K / 2))`` + ``scales`` float16
    ``(N, ceil(K / G))`` for ``w4a16``; ``packed`` uint8 ``(N, 3 * ceil(K / 4))`` + ``w_scale``
    float32 ``(N,)`` for ``w6a8``; ``bias`` float32 ``(N,)`` and ``smooth`` float32
    ``(K,)`` when present), and the ``thresholds`` / ``levels`` float32 vectors of every
    activation quantizer.
``bundle.json``
    ``format``, ``format_version``, ``scheme`` (``w8a8``, ``w4a16``, ``w6a8`` or ``auto``,
    whose layers mix the three kinds), ``group_size``, ``smoothquant``, ``alpha``,
    ``layers`` (module name to the layer spec: ``kind``, ``in_features``, ``out_features``,
    ``bias``, ``smooth`` and ``activation`` or ``group_size``), ``float_layers`` (name to the
    reason it stayed in float), ``fused_activations`` (activation modules replaced by
    identity because the GEMM applies them), ``decoder`` (:meth:`BrainDecoder.metadata`:
    model config, classes, pooling, subject channels), ``calibration``, ``report``
    (per-layer error measured at quantization time), ``auto`` (``auto`` only: ``budget_bits``,
    ``mean_bits`` and per layer the output SQNR in dB at each precision, ``sensitivity``),
    ``attn_quant`` (criss-cross block name to its ``spatial`` and ``temporal`` probability
    quantizers) and ``act_quant`` (feed-forward activation name to its quantizer), each a
    :meth:`~brainfm.deploy.adalog.TableQuantizer.spec`, ``weights`` (file name and SHA-256),
    ``extra``, ``brainfm_version`` and, for a decoder trained on subject-normalised windows,
    ``normalization`` (version 3: the method and per-subject statistics as one JSON document,
    :mod:`brainfm.deploy.normalization`; :func:`load` attaches them as ``model.normalization``,
    the attribute :func:`brainfm.models.load_decoder` sets).

:func:`load` rebuilds the float decoder from the config, swaps the listed layers for empty
quantized ones after checking that each name is an ``nn.Linear`` of the stated shape,
checks the weight file's hash, then loads it with ``strict=True`` and checks every tensor's
dtype (``load_state_dict`` would otherwise cast silently). Only JSON and safetensors are
parsed, so loading a bundle runs no code from it.

Sizes in the config are checked against the weight file's header before anything is
allocated (:func:`check_sizes`): no size may exceed the largest tensor dimension or the
tensor count the file holds, and the model the config describes, built on the ``meta``
device (no memory), must have exactly as many weights as the file.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from brainfm import __version__
from brainfm.deploy.adalog import install_from_config
from brainfm.deploy.normalization import from_json, to_json
from brainfm.deploy.qlinear import GROUP_SIZES, SCHEMES, build_quant_linear
from brainfm.deploy.quantize import set_module
from brainfm.kernels.reference import ACTIVATIONS
from brainfm.models import BrainDecoder, ModelConfig
from brainfm.models.serialization import layers_set_from_statistics

FORMAT = "brainfm-quantized"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
CONFIG_NAME = "bundle.json"
WEIGHTS_NAME = "weights.safetensors"
_MAX_CONFIG_BYTES = 16 * 2**20


#: Fields of ``decoder`` in a config: :class:`BrainDecoder`'s constructor arguments, nothing else.
_DECODER_FIELDS = set(inspect.signature(BrainDecoder.__init__).parameters) - {"self"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a quantized decoder (from :func:`brainfm.deploy.quantize`) as a bundle directory.

    Parameters
    ----------
    model : BrainDecoder
        With a ``deploy_config`` attribute.
    path : path-like
        Directory to create (an existing bundle there is overwritten).
    extra : dict, optional
        JSON-serialisable notes (e.g. the checkpoint and store used).

    Returns
    -------
    Path
        The bundle directory.
    """
    config = getattr(model, "deploy_config", None)
    if config is None or not hasattr(model, "metadata"):
        raise TypeError("save_bundle expects a decoder returned by brainfm.deploy.quantize")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path / WEIGHTS_NAME), metadata={"format": FORMAT})

    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "decoder": model.metadata(),
           "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(path / WEIGHTS_NAME)},
           "extra": extra or {}, "brainfm_version": __version__}
    normalization = getattr(model, "normalization", None)
    if normalization is not None:
        doc["normalization"] = to_json(normalization)
    (path / CONFIG_NAME).write_text(json.dumps(doc, indent=1))
    return path


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid bundle config: {msg}")


def _check_layer(name: str, spec: Any) -> None:
    _require(isinstance(spec, dict), f"layer {name!r} is not an object")
    _require(spec.get("kind") in SCHEMES, f"layer {name!r}: kind must be one of {SCHEMES}")
    for key in ("in_features", "out_features"):
        v = spec.get(key)
        _require(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                 f"layer {name!r}: {key} must be a positive int")
    for key in ("bias", "smooth"):
        _require(isinstance(spec.get(key), bool), f"layer {name!r}: {key} must be true or false")
    if spec["kind"] in ("w8a8", "w6a8"):
        _require(spec.get("activation", "none") in ACTIVATIONS, f"layer {name!r}: activation not in {ACTIVATIONS}")
    else:
        _require(spec.get("group_size") in GROUP_SIZES, f"layer {name!r}: group_size not in {GROUP_SIZES}")


def validate_config(doc: Any) -> dict[str, Any]:
    """Check a parsed ``bundle.json``; return it, or raise ``ValueError`` naming the problem."""
    _require(isinstance(doc, dict), "top level is not an object")
    _require(doc.get("format") == FORMAT, f"format is {doc.get('format')!r}, expected {FORMAT!r}")
    _require(doc.get("format_version") in READABLE_VERSIONS,
             f"format_version {doc.get('format_version')!r} is not supported (expected one of {READABLE_VERSIONS})")
    schemes = SCHEMES + ("auto",) if doc["format_version"] >= 2 else SCHEMES[:2]
    _require(doc.get("scheme") in schemes, f"scheme must be one of {schemes}, got {doc.get('scheme')!r}")
    layers = doc.get("layers")
    _require(isinstance(layers, dict), "layers must be an object")
    for name, spec in layers.items():
        _check_layer(name, spec)
        _require(spec["kind"] == doc["scheme"] or doc["scheme"] == "auto",
                 f"layer {name!r} is {spec['kind']} in a {doc['scheme']} bundle")
    for key in ("attn_quant", "act_quant"):
        _require(isinstance(doc.get(key, {}), dict), f"{key} must be an object")
        _require(doc["format_version"] >= 2 or not doc.get(key), f"{key} needs format_version 2")
    fused = doc.get("fused_activations", [])
    _require(isinstance(fused, list) and all(isinstance(n, str) for n in fused),
             "fused_activations must be a list of names")
    dec = doc.get("decoder")
    _require(isinstance(dec, dict) and isinstance(dec.get("config"), dict) and isinstance(dec.get("n_classes"), int),
             "decoder must hold config and n_classes")
    unknown = set(dec) - _DECODER_FIELDS
    _require(not unknown, f"unknown decoder fields {sorted(unknown)}")
    _require(isinstance(dec.get("token_stats", False), bool), "decoder.token_stats must be true or false")
    _require(dec.get("deploy_subject") is None or isinstance(dec["deploy_subject"], str),
             "decoder.deploy_subject must be a subject id or null")
    window = dec.get("window_s")
    _require(window is None or (isinstance(window, (int, float)) and not isinstance(window, bool)
                                and math.isfinite(window) and window > 0),
             "decoder.window_s must be a length in s > 0 or null")
    if doc.get("normalization") is not None:
        _require(doc["format_version"] >= 3, "normalization needs format_version 3")
        from_json(doc["normalization"], "bundle.json")  # raises ValueError naming the problem
    weights = doc.get("weights")
    _require(isinstance(weights, dict) and weights.get("file") == WEIGHTS_NAME
             and isinstance(weights.get("sha256"), str), f"weights must name {WEIGHTS_NAME} and its sha256")
    return doc


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``bundle.json`` of the bundle directory ``path``."""
    path = Path(path)
    cfg = path / CONFIG_NAME
    if not cfg.is_file():
        raise FileNotFoundError(f"{path} is not a brainfm bundle (no {CONFIG_NAME})")
    if cfg.stat().st_size > _MAX_CONFIG_BYTES:
        raise ValueError(f"{cfg} is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid bundle config: {cfg} is not JSON ({err})") from None
    return validate_config(doc)


def _weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors header (reads no tensor data)."""
    try:
        with safe_open(os.fspath(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - any header error means a corrupt file
        raise ValueError(f"{weights} is not a readable safetensors file ({err})") from None


def _build(doc: dict[str, Any]) -> nn.Module:
    """The quantized decoder a validated config describes, on the current default device."""
    dec = doc["decoder"]
    model = BrainDecoder(ModelConfig.from_dict(dec["config"]), **{k: v for k, v in dec.items() if k != "config"})
    for name, spec in doc["layers"].items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"invalid bundle config: no layer {name!r} in the decoder") from None
        _require(isinstance(linear, nn.Linear), f"{name!r} is a {type(linear).__name__}, not a Linear")
        _require((linear.in_features, linear.out_features, linear.bias is not None)
                 == (spec["in_features"], spec["out_features"], spec["bias"]),
                 f"layer {name!r} does not match the model's shape")
        set_module(model, name, build_quant_linear(spec))
    for name in doc.get("fused_activations", []):
        try:
            act = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"invalid bundle config: no module {name!r} to fuse") from None
        _require(type(act) in (nn.GELU, nn.SiLU), f"fused activation {name!r} is a {type(act).__name__}")
        set_module(model, name, nn.Identity())
    install_from_config(model, doc.get("attn_quant", {}), doc.get("act_quant", {}))
    return model


def check_sizes(doc: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a config whose sizes the weights cannot back, before allocating (issue #17).

    A hand-edited ``bundle.json`` could otherwise ask for a billion subjects or layers.
    Every integer size must fit the largest dimension or the tensor count of the file; then
    the described model, built on the ``meta`` device, must hold exactly the file's weights.
    """
    limit = max([len(shapes)] + [d for shape in shapes.values() for d in shape])
    dec = doc["decoder"]
    sizes = {f"config.{k}": v for k, v in dec["config"].items() if isinstance(v, int) and not isinstance(v, bool)}
    sizes.update({k: v for k, v in dec.items() if isinstance(v, int) and not isinstance(v, bool)})  # n_classes, ...
    subjects = dec.get("subject_channels") or {}
    _require(isinstance(subjects, dict), "decoder.subject_channels must be an object")
    sizes["number of subjects"] = len(subjects)
    sizes.update({f"subject_channels[{k!r}]": v for k, v in subjects.items()})
    sizes["number of quantized layers"] = len(doc["layers"])
    for name, spec in doc["layers"].items():
        sizes.update({f"layers[{name!r}].{k}": spec[k] for k in ("in_features", "out_features")})
    for what, value in sizes.items():
        # packed weights hold up to 2 input features per byte (int4), so in_features may reach 2x
        bound = 2 * limit if what.endswith(".in_features") else limit
        _require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bound,
                 f"{what} = {value!r} exceeds what the weights hold (largest dimension or tensor count {limit})")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in _build(doc).state_dict().items()}
    n_expected, n_file = sum(math.prod(s) for s in expected.values()), sum(math.prod(s) for s in shapes.values())
    _require(n_expected == n_file, f"the config describes {n_expected} weights but the file holds {n_file}")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a quantized decoder from a bundle directory (eval mode).

    Raises
    ------
    FileNotFoundError
        No ``bundle.json`` or weight file.
    ValueError
        Invalid config, hash mismatch, or weights that do not fit the config.
    """
    path = Path(path)
    doc = read_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"bundle {path} has no {WEIGHTS_NAME}")
    if _sha256(weights) != doc["weights"]["sha256"]:
        raise ValueError(f"{weights} does not match the SHA-256 in {CONFIG_NAME} (corrupt or edited)")
    check_sizes(doc, _weight_shapes(weights))
    model = _build(doc)
    state = load_file(os.fspath(weights))
    expected = model.state_dict()
    bad = [k for k in state if k in expected and state[k].dtype != expected[k].dtype]
    if bad:
        raise ValueError(f"{weights}: wrong dtype for {bad[:5]}")
    model.load_state_dict(state, strict=True)
    if "token_stats" not in doc["decoder"]:  # a bundle written before decoders recorded it
        model.token_stats = layers_set_from_statistics(state, ())
    model.deploy_config = {k: v for k, v in doc.items()
                           if k not in ("format", "format_version", "decoder", "weights", "normalization")}
    model.normalization = None if doc.get("normalization") is None else from_json(doc["normalization"], str(path / CONFIG_NAME))
    return model.to(map_location).eval()
