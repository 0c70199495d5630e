"""Save and load encoders and decoders as safetensors with their configs as JSON metadata.

File layout (``brainfm-encoder`` format, version 1): a safetensors file whose tensors are
the :class:`~brainfm.models.BrainEncoder` state dict and whose string metadata holds

* ``format``: ``"brainfm-encoder"``;
* ``format_version``: ``"1"``;
* ``config``: ``ModelConfig.to_dict()`` as JSON.

``brainfm-decoder`` (version 1) is the same for a whole :class:`~brainfm.models.BrainDecoder`
(encoder, subject layers, head), with ``decoder`` metadata: ``n_classes``, ``pooling``,
``subject_channels`` and ``classes`` as JSON.

Only safetensors is read or written: no pickle, so loading a file never runs code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from brainfm.models.config import ModelConfig
from brainfm.models.decoder import BrainDecoder
from brainfm.models.encoder import BrainEncoder

FORMAT = "brainfm-encoder"
DECODER_FORMAT = "brainfm-decoder"
FORMAT_VERSION = "1"


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
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}"
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


def save_decoder(decoder: BrainDecoder, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write a :class:`BrainDecoder` (``brainfm-decoder`` format) to ``path``."""
    meta = decoder.metadata()
    state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    metadata = {
        "format": DECODER_FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(meta.pop("config")),
        "decoder": json.dumps(meta),
        "extra": json.dumps(extra or {}),
    }
    save_file(state, os.fspath(path), metadata=metadata)


def load_decoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> BrainDecoder:
    """Rebuild a :class:`BrainDecoder` written by :func:`save_decoder` (in eval mode)."""
    meta = read_metadata(path, (DECODER_FORMAT,))
    decoder = BrainDecoder(ModelConfig.from_dict(meta["config"]), **meta["decoder"])
    decoder.load_state_dict(load_file(os.fspath(path), device=str(map_location)), strict=True)
    return decoder.to(map_location).eval()
