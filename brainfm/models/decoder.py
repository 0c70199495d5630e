"""A decoder: shared encoder trunk, optional subject-specific layers, classification head."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from brainfm.models.config import ModelConfig
from brainfm.models.encoder import BrainEncoder
from brainfm.models.heads import ClassificationHead
from brainfm.models.subject import SubjectLayers


class BrainDecoder(nn.Module):
    """Windows ``(B, C, T)`` -> class logits ``(B, n_classes)``.

    Inputs are in the units the decoder was trained on: when ``normalization`` is set, each
    subject's windows must first go through that subject-adaptive normalisation.

    ``x -> subject mixing -> BrainEncoder -> subject FiLM -> pooled head``. The subject
    layers (:mod:`brainfm.models.subject`) act only on samples whose subject has layers;
    everyone else goes through the shared model.

    Parameters
    ----------
    config : ModelConfig
        Encoder architecture.
    n_classes : int
        Number of classes.
    pooling : {'mean', 'attention'}
        Token pooling of the head.
    head_dropout : float
        Dropout before the head's linear layer.
    subject_channels : dict of str to int, optional
        Subjects that get their own layers, with their channel counts.
    classes : list of str, optional
        Class names, kept with the weights.
    """

    def __init__(
        self,
        config: ModelConfig,
        n_classes: int,
        pooling: str = "mean",
        head_dropout: float = 0.0,
        subject_channels: dict[str, int] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if classes is not None and len(classes) != n_classes:
            raise ValueError(f"{len(classes)} class names for {n_classes} classes")
        self.config = config
        self.n_classes = n_classes
        self.pooling = pooling
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
        self.encoder = BrainEncoder(config)
        self.subjects = SubjectLayers(config.d_model, subject_channels)
        self.head = ClassificationHead(config.d_model, n_classes, head_dropout, pooling)
        #: Per-subject input normalisation statistics ``(tensors, json)`` the decoder was trained
        #: with, or None (:mod:`brainfm.models.serialization`; rebuild the normaliser with
        #: ``brainfm.data.normalize.SubjectNormalizer.from_tensors(*decoder.normalization)``).
        self.normalization: tuple[dict[str, torch.Tensor], str] | None = None

    def tokens(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        subjects: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Subject-adapted encoder tokens ``(B, C, S, D)``."""
        if subjects is not None and len(self.subjects):
            x = self.subjects.mix(x, subjects)  # (B, C, T)
        tokens = self.encoder(x, sensor_geometry, sensor_type, channel_mask)  # (B, C, S, D)
        if subjects is not None and len(self.subjects):
            tokens = self.subjects.modulate(tokens, subjects)
        return tokens

    def forward(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        subjects: Sequence[str] | None = None,
    ) -> torch.Tensor:
        tokens = self.tokens(x, sensor_geometry, sensor_type, channel_mask, subjects)
        return self.head(tokens, channel_mask)  # (B, n_classes)

    def metadata(self) -> dict:
        """What :func:`brainfm.models.load_decoder` needs to rebuild this module."""
        return {
            "config": self.config.to_dict(),
            "n_classes": self.n_classes,
            "pooling": self.pooling,
            "subject_channels": dict(self.subjects.channels),
            "classes": self.classes,
        }
