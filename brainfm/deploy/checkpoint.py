"""Read the fine-tuned decoder that ``brainfm quantize`` and ``brainfm export`` start from."""

from __future__ import annotations

import os
from pathlib import Path

from brainfm.models.decoder import BrainDecoder
from brainfm.models.serialization import load_decoder


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
