"""Read the fine-tuned decoder that ``brainfm quantize`` and ``brainfm export`` start from."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """A :class:`~brainfm.models.BrainDecoder` (eval mode, CPU) from a fine-tuning output.

    Accepts ``decoder.safetensors`` (written by ``DecodeModule`` at the end of ``fit``) and
    a ``DecodeModule`` Lightning ``.ckpt`` (read by
    :func:`brainfm.tasks.decode.read_init`, ``torch.load(weights_only=True)``: no code runs).

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
    from brainfm.models import BrainDecoder, ModelConfig  # noqa: PLC0415

    if path.suffix == ".safetensors":
        from brainfm.models.serialization import DECODER_FORMAT, FORMAT, read_metadata  # noqa: PLC0415

        kind = read_metadata(path, (FORMAT, DECODER_FORMAT))["format"]
        if kind != DECODER_FORMAT:
            raise ValueError(f"{path} holds a pretrained encoder without a head; fine-tune it first "
                             "(brainfm fit with a DecodeModule writes decoder.safetensors)")
        from brainfm.models import load_decoder  # noqa: PLC0415

        return load_decoder(path)
    if path.suffix != ".ckpt":
        raise ValueError(f"{path}: expected decoder.safetensors or a Lightning .ckpt")
    from brainfm.tasks.decode import read_init  # noqa: PLC0415

    state, meta = read_init(path)
    if meta["kind"] != "decoder":
        raise ValueError(f"{path} holds a pretrained encoder without a head; fine-tune it first")
    dec = dict(meta["decoder"])
    if dec.get("classes") is None:
        dec.pop("classes", None)
    decoder = BrainDecoder(ModelConfig.from_dict(meta["config"]), **dec)
    decoder.load_state_dict(state, strict=True)
    return decoder.eval()
