"""Save and load encoders and decoders as safetensors with their configs as JSON metadata.

File layout (``brainfm-encoder`` format, version 1): a safetensors file whose tensors are
the :class:`~brainfm.models.BrainEncoder` state dict and whose string metadata holds

* ``format``: ``"brainfm-encoder"``;
* ``format_version``: ``"1"``;
* ``config``: ``ModelConfig.to_dict()`` as JSON.

``brainfm-decoder`` is the same for a whole :class:`~brainfm.models.BrainDecoder`
(encoder, subject layers, head), with ``decoder`` metadata: the :class:`BrainDecoder` arguments
besides the config (``n_classes``, ``pooling``, ``subject_channels``, ``classes``, ...) as JSON.
Version 2 adds ``window_s``, the window length the decoder was trained on; version 1 files
still load (those written before ``window_s`` existed load without one). A brainfm that meets a
version it does not know says so and names the file, rather than failing on a metadata key it
has never seen. A decoder trained on subject-normalised windows
(:mod:`brainfm.data.normalize`) also carries its per-subject statistics: tensors named
``normalization.{subject}.{mean,std,whitening,scale}`` and ``normalization`` metadata (JSON:
method and, per subject, source, seconds, sample count, channel names). They are not part of
the state dict; :func:`read_weights` returns them as ``Weights.normalization`` and
:func:`load_decoder` attaches them to the decoder, from which
``brainfm.data.normalize.SubjectNormalizer.from_tensors`` rebuilds the normaliser.

Only safetensors is written. :func:`read_weights` is the one reader of every weights file
brainfm makes: an encoder, a decoder, or a Lightning ``.ckpt`` of a pretraining or decoding
task (read with ``torch.load(weights_only=True)``). No pickle runs, so loading a file never
runs code. Its shape follows timm's ``_helpers.load_state_dict``: one function that knows
every container and returns a plain state dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from brainfm.models.cbramod import load_cbramod_weights
from brainfm.models.config import ModelConfig, config_from_dict, resolve_config
from brainfm.models.decoder import BrainDecoder
from brainfm.models.encoder import BrainEncoder
from brainfm.models.subject import subject_key

FORMAT = "brainfm-encoder"
DECODER_FORMAT = "brainfm-decoder"
FORMAT_VERSION = "1"
DECODER_FORMAT_VERSION = "2"
#: the versions of each format this brainfm reads; the last one is the one it writes
READABLE_VERSIONS = {FORMAT: ("1",), DECODER_FORMAT: ("1", "2")}


def save_encoder(
    encoder: BrainEncoder, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> None:
    """Write ``encoder`` to ``path`` (safetensors + JSON config metadata).

    Parameters
    ----------
    encoder : BrainEncoder
    path : path-like
    extra : dict, optional
        More JSON-serialisable metadata, stored under the ``extra`` key.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(encoder.config.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    save_file(state, os.fspath(path), metadata=metadata)


def read_metadata(path: str | os.PathLike, formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """The metadata of a brainfm safetensors file, with ``config`` and ``extra`` decoded."""
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") not in formats:
        raise ValueError(f"{path} is not a {' or '.join(formats)} file (metadata format={meta.get('format')!r})")
    readable = READABLE_VERSIONS[meta["format"]]
    if "format_version" not in meta:
        raise ValueError(f"{path} is a {meta['format']} file without a format_version: damaged or not written by brainfm")
    if meta["format_version"] not in readable:
        raise ValueError(
            f"{path} is {meta['format']} format version {meta.get('format_version')}; this brainfm reads "
            f"version {' or '.join(readable)} (a newer brainfm wrote the file: upgrade brainfm to read it)"
        )
    meta["config"] = json.loads(meta["config"])
    meta["extra"] = json.loads(meta.get("extra", "{}"))
    if "decoder" in meta:
        meta["decoder"] = json.loads(meta["decoder"])
    return meta


def load_pretrained(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> BrainEncoder:
    """Rebuild a :class:`BrainEncoder` from a file written by :func:`save_encoder`.

    Parameters
    ----------
    path : path-like
        A ``.safetensors`` file.
    map_location : str or torch.device
        Device for the weights.

    Returns
    -------
    BrainEncoder
        In eval mode.
    """
    config = ModelConfig.from_dict(read_metadata(path)["config"])
    encoder = BrainEncoder(config)
    encoder.load_state_dict(load_file(os.fspath(path), device=str(map_location)), strict=True)
    return encoder.to(map_location).eval()


NORMALIZATION = "normalization"


def save_decoder(decoder: BrainDecoder, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                 normalization: tuple[dict[str, torch.Tensor], str] | None = None) -> None:
    """Write a :class:`BrainDecoder` (``brainfm-decoder`` format) to ``path``.

    ``normalization`` is ``(tensors, json_metadata)`` of per-subject statistics
    (``SubjectNormalizer.to_tensors()``); default: the decoder's own ``normalization``
    attribute, if it has one (a decoder loaded by :func:`load_decoder`).
    """
    meta = decoder.metadata()
    state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    metadata = {
        "format": DECODER_FORMAT,
        "format_version": DECODER_FORMAT_VERSION,
        "config": json.dumps(meta.pop("config")),
        "decoder": json.dumps(meta),
        "extra": json.dumps(extra or {}),
    }
    normalization = normalization if normalization is not None else getattr(decoder, NORMALIZATION, None)
    if normalization is not None:
        tensors, norm_meta = normalization
        state.update({f"{NORMALIZATION}.{k}": v.detach().cpu().contiguous() for k, v in tensors.items()})
        metadata[NORMALIZATION] = norm_meta
    save_file(state, os.fspath(path), metadata=metadata)


@dataclass(frozen=True)
class Weights:
    """Weights read by :func:`read_weights`.

    Parameters
    ----------
    kind : {'encoder', 'decoder'}
        What the file holds: a pretrained encoder, or a whole fine-tuned decoder.
    state : dict of str to Tensor
        State dict with keys relative to :class:`BrainDecoder` (``encoder.*``, ``head.*``,
        ``subjects.*``); an encoder's keys are prefixed with ``encoder.``.
    config : ModelConfig
        The architecture.
    decoder : dict, optional
        For a decoder: ``n_classes``, ``pooling``, ``subject_channels``, ``classes``,
        ``token_stats``, ``deploy_subject``, ``window_s`` and, for a hybrid head, ``n_features`` and ``hybrid``
        (the :class:`BrainDecoder` arguments besides the config).
    normalization : (dict of str to Tensor, str), optional
        A decoder's per-subject normalisation statistics and their JSON metadata (see the
        module docstring), if it was trained on normalised windows.
    extra : dict
        The file's ``extra`` metadata (e.g. a decoder's ``reset_subjects``, whose subject
        layers were trained rather than set from statistics); for a checkpoint, the same keys
        from its hyperparameters.
    """

    kind: Literal["encoder", "decoder"]
    state: dict[str, torch.Tensor]
    config: ModelConfig
    decoder: dict[str, Any] | None = None
    normalization: tuple[dict[str, torch.Tensor], str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def layers_set_from_statistics(state: dict[str, torch.Tensor], reset_subjects) -> bool:
    """Whether a decoder file that predates the ``token_stats`` record was trained with token statistics:
    some subject outside ``reset_subjects`` has FiLM away from the identity but no channel mixing, which only
    label-free token statistics produce (trained subject layers move the mixing too)."""
    reset = {subject_key(s) for s in reset_subjects}
    prefix = "subjects.adapters."
    for key in {k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)} - reset:
        scale, shift, mix = (state[f"{prefix}{key}.{n}"] for n in ("token_scale", "token_shift", "mix_delta"))
        if bool((mix == 0).all()) and not (bool((scale == 1).all()) and bool((shift == 0).all())):
            return True
    return False


def read_weights(path: str | os.PathLike) -> Weights:
    """Weights and architecture from any brainfm weights file, without unpickling code.

    Accepts ``encoder.safetensors`` (pretraining), ``decoder.safetensors`` (fine-tuning),
    CBraMod's released ``pretrained_weights.pth`` (a plain state dict, read as a
    :class:`~brainfm.models.cbramod.CBraModEncoder`) and Lightning checkpoints of :class:`~brainfm.tasks.PretrainModule` or
    :class:`~brainfm.tasks.DecodeModule` (any other suffix; read with
    ``torch.load(weights_only=True)``). Tensors are on the CPU.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a brainfm file, or a checkpoint with neither an encoder nor a decoder.
    """
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(f"no such weights file: {path}{where}")
    if path.suffix == ".safetensors":
        meta = read_metadata(path, (FORMAT, DECODER_FORMAT))
        state = load_file(os.fspath(path))
        config = config_from_dict(meta["config"])
        if meta["format"] == FORMAT:
            return Weights("encoder", {f"encoder.{k}": v for k, v in state.items()}, config)
        prefix = f"{NORMALIZATION}."
        norm = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        normalization = (norm, meta[NORMALIZATION]) if NORMALIZATION in meta else None
        decoder = meta["decoder"]
        if "token_stats" not in decoder:  # written before decoders recorded it
            decoder["token_stats"] = layers_set_from_statistics(state, meta["extra"].get("reset_subjects") or ())
        return Weights("decoder", state, config, decoder, normalization, meta["extra"])
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt and "hyper_parameters" not in ckpt:
        # not a Lightning checkpoint: CBraMod's released weights (pretrained_weights.pth)
        encoder = load_cbramod_weights(ckpt)
        return Weights("encoder", {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, encoder.config)
    hp = ckpt.get("hyper_parameters", {})
    config = resolve_config(hp.get("model", "tiny"), hp.get("model_overrides"))
    state = ckpt["state_dict"]
    if any(k.startswith("decoder.") for k in state):
        state = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        dec = {"n_classes": hp["n_classes"], "pooling": hp.get("pooling", "mean"),
               "subject_channels": hp.get("subject_channels") or {}, "classes": hp.get("classes"),
               "hybrid": hp.get("hybrid"), "token_stats": bool(hp.get("token_stats")),
               "n_features": int(state["feature_mean"].shape[0]) if "feature_mean" in state else 0,
               "window_s": ckpt.get("datamodule_hyper_parameters", {}).get("window_s")}
        norm = ckpt.get(NORMALIZATION)
        return Weights("decoder", state, config, dec, None if norm is None else (norm["tensors"], norm["metadata"]),
                       {"reset_subjects": hp.get("reset_subjects") or []})
    state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    if not state:
        raise ValueError(f"{path} holds neither a brainfm encoder nor a decoder")
    return Weights("encoder", state, config)


def load_decoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> BrainDecoder:
    """Rebuild a :class:`BrainDecoder` (in eval mode) from ``decoder.safetensors``
    (:func:`save_decoder`) or a decoding task's ``.ckpt`` (:func:`read_weights`).

    Raises
    ------
    ValueError
        The file holds only an encoder (pretraining output), or is not a brainfm file.
    """
    return decoder_from_weights(read_weights(path), path).to(map_location)


def decoder_from_weights(weights: Weights, source: str | os.PathLike) -> BrainDecoder:
    """The :class:`BrainDecoder` (eval mode) of weights already read from ``source`` (:func:`read_weights`)."""
    if weights.kind != "decoder":
        raise ValueError(f"{source} holds a pretrained encoder without a head; fine-tune it first "
                         "(brainfm fit with a DecodeModule writes decoder.safetensors)")
    decoder = BrainDecoder(weights.config, **weights.decoder)  # the encoder kind follows the config
    decoder.load_state_dict(weights.state, strict=True)
    decoder.normalization = weights.normalization
    return decoder.eval()
