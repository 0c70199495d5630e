"""A decoder: shared encoder trunk, optional subject-specific layers, classification head."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn

from brainfm.models.config import ModelConfig, encoder_class
from brainfm.models.encoder import BrainEncoder
from brainfm.models.heads import ClassificationHead
from brainfm.models.subject import SubjectLayers

#: The window length in s assumed for a decoder that does not record its own (``DecodingDataModule``'s default).
DEFAULT_WINDOW_S = 5.0


class BrainDecoder(nn.Module):
    """Windows ``(B, C, T)`` -> class logits ``(B, n_classes)``.

    Inputs are in the units the decoder was trained on: when ``normalization`` is set, each
    subject's windows must first go through that subject-adaptive normalisation.

    ``x -> subject mixing -> BrainEncoder -> subject FiLM -> pooled head``. The subject
    layers (:mod:`brainfm.models.subject`) act only on samples whose subject has layers;
    everyone else goes through the shared model.

    A decoder trained with label-free token statistics (``token_stats``,
    :mod:`brainfm.tasks.token_stats`) has a head that reads each subject's tokens standardised
    by that subject's FiLM, so its shared model is not what any subject gets: it is deployed for
    one subject, ``deploy_subject``, whose layers every call without ``subjects`` then uses
    (:func:`brainfm.deploy.checkpoint.load_checkpoint`, ``brainfm export/quantize/detect --subject``).

    Hybrid head (``n_features > 0``): the caller also passes each window's raw feature
    vector (``features``, e.g. :func:`brainfm.targets.compute_targets` with the spec kept
    in ``hybrid``); the decoder standardises it with the ``feature_mean`` /
    ``feature_std`` buffers fitted on the training windows (non-finite entries become 0)
    and the head reads it beside the pooled tokens. The models layer does not compute
    features itself (it sits below :mod:`brainfm.targets`); ``hybrid`` is kept only so
    the saved decoder says how its features were made.

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
    n_features : int
        Length of the hybrid head's feature vector (0: no hybrid head).
    hybrid : dict, optional
        JSON description of how the features are computed (a
        :class:`brainfm.targets.TargetSpec`'s fields), saved with the decoder.
    encoder : nn.Module, optional
        A ready trunk with :class:`BrainEncoder`'s interface (e.g. a
        :class:`~brainfm.models.cbramod.CBraModEncoder` holding loaded weights); default:
        a fresh encoder of ``config``'s kind.
    token_stats : bool
        The head was trained on per-subject standardised tokens (label-free token statistics).
    deploy_subject : str, optional
        The subject whose layers a call without ``subjects`` uses (one of ``subject_channels``).
    window_s : float, optional
        The window length in s the decoder was trained on (set by fit): what ``brainfm
        detect/stream/adapt/export/quantize`` use unless told otherwise. The encoder accepts any whole
        number of patches, but the head and the subject statistics were fitted on this length.
    """

    def __init__(
        self,
        config: ModelConfig,
        n_classes: int,
        pooling: str = "mean",
        head_dropout: float = 0.0,
        subject_channels: dict[str, int] | None = None,
        classes: Sequence[str] | None = None,
        n_features: int = 0,
        hybrid: dict | None = None,
        encoder: nn.Module | None = None,
        token_stats: bool = False,
        deploy_subject: str | None = None,
        window_s: float | None = None,
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
        if encoder is None:
            encoder = (encoder_class(config) or BrainEncoder)(config)
        self.encoder = encoder
        width = getattr(config, "out_features", config.d_model)  # CBraMod's tokens may be projected
        self.subjects = SubjectLayers(width, subject_channels)
        if not isinstance(token_stats, bool) or not (deploy_subject is None or isinstance(deploy_subject, str)):
            raise TypeError(f"token_stats must be a bool and deploy_subject a str or None, got {token_stats!r} and "
                            f"{deploy_subject!r}")
        self.token_stats = token_stats
        if deploy_subject is not None and deploy_subject not in self.subjects:
            raise ValueError(f"no subject layers for deploy_subject {deploy_subject!r}; "
                             f"the decoder holds {sorted(self.subjects.channels) or 'none'}")
        self.deploy_subject = deploy_subject
        self.window_s = window_s
        self.head = ClassificationHead(width, n_classes, head_dropout, pooling, n_features)
        self.n_features = int(n_features)
        self.hybrid = dict(hybrid) if hybrid is not None else None
        if self.n_features:
            self.register_buffer("feature_mean", torch.zeros(self.n_features))
            self.register_buffer("feature_std", torch.ones(self.n_features))
        #: Per-subject input normalisation statistics ``(tensors, json)`` the decoder was trained
        #: with, or None (:mod:`brainfm.models.serialization`; rebuild the normaliser with
        #: ``brainfm.data.normalize.SubjectNormalizer.from_tensors(*decoder.normalization)``).
        self.normalization: tuple[dict[str, torch.Tensor], str] | None = None

    @property
    def window_s(self) -> float | None:
        """The training window length in s, or None when unknown (see the class docstring)."""
        return self._window_s

    @window_s.setter
    def window_s(self, value: float | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"window_s must be a length in s > 0 or None, got {value!r}")
        self._window_s = None if value is None else float(value)

    def tokens(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        subjects: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Subject-adapted encoder tokens ``(B, C, S, D)`` (``subjects`` None: ``deploy_subject``'s, if set)."""
        if subjects is None and self.deploy_subject is not None:
            subjects = [self.deploy_subject] * x.shape[0]
        if subjects is not None and len(self.subjects):
            x = self.subjects.mix(x, subjects)  # (B, C, T)
        tokens = self.encoder(x, sensor_geometry, sensor_type, channel_mask)  # (B, C, S, D)
        if subjects is not None and len(self.subjects):
            tokens = self.subjects.modulate(tokens, subjects)
        return tokens

    def standardize_features(self, features: torch.Tensor) -> torch.Tensor:
        """Raw hybrid features ``(B, K)`` -> z-scored with the training statistics, NaN -> 0."""
        z = (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std  # (B, K)
        return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)

    def forward(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        subjects: Sequence[str] | None = None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, n_classes)``; ``features`` ``(B, K)`` raw, for a hybrid head only."""
        tokens = self.tokens(x, sensor_geometry, sensor_type, channel_mask, subjects)
        if self.n_features:
            if features is None:
                raise ValueError(f"this decoder has a hybrid head: pass features (batch, {self.n_features}) "
                                 f"computed as {self.hybrid}")
            features = self.standardize_features(features)
        elif features is not None:
            raise ValueError("features given to a decoder without a hybrid head (n_features=0)")
        return self.head(tokens, channel_mask, features)  # (B, n_classes)

    def metadata(self) -> dict:
        """What :func:`brainfm.models.load_decoder` needs to rebuild this module."""
        return {
            "config": self.config.to_dict(),
            "n_classes": self.n_classes,
            "pooling": self.pooling,
            "subject_channels": dict(self.subjects.channels),
            "classes": self.classes,
            "n_features": self.n_features,
            "hybrid": self.hybrid,
            "token_stats": self.token_stats,
            "deploy_subject": self.deploy_subject,
            "window_s": self.window_s,
        }


def window_for(trained_s: float | None, requested_s: float | None, default_s: float) -> float:
    """The window length in s to run a decoder on: ``requested_s`` when given (with a warning when it
    differs from the decoder's training window ``trained_s``), else ``trained_s``, else ``default_s``."""
    if requested_s is None:
        return trained_s if trained_s is not None else default_s
    if trained_s is not None and not math.isclose(requested_s, trained_s):
        warnings.warn(f"the decoder was trained on {trained_s:g}-s windows; running it on {requested_s:g}-s windows "
                      "(its head and subject statistics were fitted on the training length)", stacklevel=2)
    return requested_s
