"""Read the fine-tuned decoder that ``brainfm quantize`` and ``brainfm export`` start from, and
the subject-normalisation statistics of any deployed form of it."""

from __future__ import annotations

import os
from pathlib import Path

from brainfm.deploy.bundle import read_config
from brainfm.deploy.normalization import Normalization, from_json, read_onnx
from brainfm.models.decoder import BrainDecoder
from brainfm.models.serialization import load_decoder, read_weights


def load_checkpoint(path: str | os.PathLike, subject: str | None = None) -> BrainDecoder:
    """A :class:`~brainfm.models.BrainDecoder` (eval mode, CPU) from a fine-tuning output, set to
    deploy ``subject``'s layers (:func:`deploy_for`).

    Accepts ``decoder.safetensors`` (written by ``DecodeModule`` at the end of ``fit``) and
    a ``DecodeModule`` Lightning ``.ckpt``, both read by
    :func:`brainfm.models.serialization.read_weights` (``torch.load(weights_only=True)``:
    no code runs).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file holds only an encoder (pretraining output), or is not a brainfm file; or
        :func:`deploy_for` refuses ``subject``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"{path}: expected decoder.safetensors or a Lightning .ckpt")
    return deploy_for(load_decoder(path), subject, path)


def deploy_for(decoder: BrainDecoder, subject: str | None, source: str | os.PathLike) -> BrainDecoder:
    """Set which subject's layers ``decoder`` deploys with (``decoder.deploy_subject``).

    A decoder trained with label-free token statistics has no shared model that any subject gets
    (its head reads each subject's standardised tokens), so it needs ``subject``; any other decoder
    without ``subject`` deploys its shared model, what an unseen subject gets, and leaves its subject
    layers out (:func:`shared_model_note`).

    Raises
    ------
    ValueError
        ``subject`` has no layers in the decoder, or a token-statistics decoder got no ``subject``.
    """
    held = sorted(decoder.subjects.channels)
    if subject is not None:
        if subject not in decoder.subjects:
            raise ValueError(f"{source}: no subject layers for {subject!r}; it holds {held or 'none'}")
        if decoder.token_stats and decoder.subjects.get(subject).is_identity():
            raise ValueError(f"{source}: {subject}'s token statistics were never estimated in this file (its layers "
                             "are the identity, e.g. a test subject of the fit that wrote it); estimate them from "
                             f"the subject's unlabelled windows first: brainfm adapt --ckpt {source} --store STORE "
                             f"--subjects {subject} --out ADAPTED")
        decoder.deploy_subject = subject
    elif decoder.token_stats and decoder.deploy_subject is None:
        raise ValueError(
            f"{source} was trained with label-free token statistics: its head reads each subject's tokens "
            "standardised by that subject's statistics, so it has no shared model to deploy. Name the subject "
            f"with --subject (it holds {', '.join(held) or 'no subject'}); add a new subject first, without "
            f"labels: brainfm adapt --ckpt {source} --store STORE --subjects S --out ADAPTED")
    return decoder


def shared_model_note(decoder: BrainDecoder) -> str | None:
    """What a deployment of ``decoder``'s shared model leaves out, or None."""
    if decoder.deploy_subject is not None or not len(decoder.subjects):
        return None
    held = sorted(decoder.subjects.channels)
    return (f"deploying the shared model (what an unseen subject gets); the subject layers of "
            f"{', '.join(held[:6])}{' ...' if len(held) > 6 else ''} are left out: --subject S deploys one")


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
