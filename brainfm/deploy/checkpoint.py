"""Read the fine-tuned decoder that ``brainfm quantize`` and ``brainfm export`` start from, and
the subject-normalisation statistics of any deployed form of it."""

from __future__ import annotations

import os
from pathlib import Path

from brainfm.deploy.bundle import read_config
from brainfm.deploy.normalization import Normalization, from_json, read_onnx
from brainfm.models.decoder import BrainDecoder
from brainfm.models.serialization import load_decoder, read_weights


def load_checkpoint(path: str | os.PathLike) -> BrainDecoder:
    """A :class:`~brainfm.models.BrainDecoder` (eval mode, CPU) from a fine-tuning output.

    Accepts ``decoder.safetensors`` (written by ``DecodeModule`` at the end of ``fit``) and
    a ``DecodeModule`` Lightning ``.ckpt``, both read by
    :func:`brainfm.models.serialization.read_weights` (``torch.load(weights_only=True)``:
    no code runs).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file holds only an encoder (pretraining output), or is not a brainfm file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"{path}: expected decoder.safetensors or a Lightning .ckpt")
    return load_decoder(path)


def read_normalization(path: str | os.PathLike) -> Normalization | None:
    """The ``(tensors, metadata JSON)`` statistics of a deployed decoder: ``decoder.safetensors``
    or ``.ckpt``, a bundle directory, or an ``.onnx`` file (fp32 or int8); None when the
    decoder was trained without subject normalisation (:mod:`brainfm.deploy.normalization`)."""
    path = Path(path)
    if path.is_dir():
        doc = read_config(path)
        return None if doc.get("normalization") is None else from_json(doc["normalization"], str(path / "bundle.json"))
    if path.suffix == ".onnx":
        return read_onnx(path)
    return read_weights(path).normalization
