"""Fine-tuning a brainfm model on labelled windows: full, linear probe, reset-tuning.

Modes (``mode``):

``full``
    Every parameter trains. With ``init_from`` a pretrained encoder, the encoder learns at
    ``encoder_lr_factor · lr`` and the new head at ``lr``; without it, the model trains
    from scratch.
``linear``
    Linear probe: the encoder is frozen (and kept in eval mode); the pooling head (and the
    subject layers, with ``subject_layers=True``) train.
``reset``
    Cross-subject reset-tuning (MindBridge, Wang et al., CVPR 2024; see
    :mod:`brainfm.models.subject`). ``init_from`` is a fine-tuned decoder
    (``decoder.safetensors`` or a DecodeModule checkpoint); every subject in the training
    set gets fresh subject-specific layers, and only those layers train, with the trunk
    and head frozen. Use it with ``DecodingDataModule(adapt_subjects=[...],
    adapt_seconds=...)``, which trains on the first seconds of each new subject and tests
    on the rest.

``subject_layers=True`` (modes ``full`` and ``linear``) gives every training subject its
own layers, trained jointly with the trunk (``full``) as MindBridge does, so the trunk is
pushed towards what subjects share, or with the head alone (``linear``).

At the end of fit the decoder is written next to the logs as ``decoder.safetensors``
(:func:`brainfm.models.load_decoder`), the input of ``brainfm quantize``.

Hybrid head (``hybrid``): the pooled tokens are concatenated with the window's
neurodynamics feature vector (:func:`brainfm.targets.compute_targets`, z-scored with
statistics of the training windows fitted before the first step and saved with the
decoder). ``hybrid: true`` uses :data:`HYBRID_FEATURES`, the cheap spectral groups; a
dict gives :class:`brainfm.targets.TargetSpec` fields.

Subject-adaptive normalisation (``DecodingDataModule(normalize=...)``,
:mod:`brainfm.data.normalize`): the per-subject statistics of the data the decoder saw are
kept on ``decoder.normalization``, in checkpoints and in ``decoder.safetensors`` (with the
method and source in its ``extra`` metadata). A decoder trained with one method must be
evaluated or reset-tuned on data normalised the same way; a mismatch fails in ``setup``.

Label-free token statistics (``token_stats=True``, :mod:`brainfm.tasks.token_stats`): every
subject's FiLM layer is set, without labels, to standardise its own encoder tokens (AdaBN,
Li et al. 2018), for the training subjects at each epoch start and for every validation,
test and prediction subject before its loader runs (``token_stats_source``: ``session`` or
``calibration``). The subjects' layers, and so their statistics, are saved with the decoder.

Reset-tuning a token-statistics decoder (``mode='reset', token_stats=True``): each new subject's
layers start from the label-free statistics of its calibration windows (the FiLM that
standardises its tokens, which is what the frozen head was trained to read) instead of the
identity, and are then trained on the calibration labels. The reset-tuned subjects are listed
in ``reset_subjects`` (hyperparameters, checkpoints) and keep their trained layers at
validation, test and prediction, where every other subject gets its statistics as above.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from brainfm.data.summary import DataSummary
from brainfm.models.config import ModelConfig, resolve_config
from brainfm.models.decoder import BrainDecoder, window_for
from brainfm.models.serialization import read_weights, save_decoder
from brainfm.targets import TargetNormalizer, TargetSpec, compute_targets, target_names
from brainfm.tasks.classify import ClassifierModule
from brainfm.tasks.token_stats import SOURCES as TOKEN_STATS_SOURCES
from brainfm.tasks.token_stats import adapt_dataset

MODES = ("full", "linear", "reset")

#: The hybrid head's default features (``hybrid: true``): relative and log band power,
#: Hjorth parameters and the band-ratio indices, channel-pooled (:mod:`brainfm.targets`).
#: Phase locking, coupling and sample entropy are left out by default: they cost most
#: of the target vector's time per batch.
HYBRID_FEATURES: dict[str, Any] = {"features": ["relpow", "logpow", "hjorth", "indices"]}


def hybrid_spec(hybrid: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """The hybrid head's feature spec as plain JSON (``True`` -> :data:`HYBRID_FEATURES`)."""
    if hybrid is None or hybrid is False:
        return None
    spec = dict(HYBRID_FEATURES if hybrid is True else hybrid)
    TargetSpec(**spec)  # validate now, with TargetSpec's own messages
    return spec


class DecodeModule(ClassifierModule):
    """Fine-tune a :class:`~brainfm.models.BrainDecoder` on labelled windows.

    Parameters
    ----------
    model : str, dict or ModelConfig
        Architecture when training from scratch; with ``init_from`` the file's config wins.
    model_overrides : dict, optional
        Fields replaced in the config (e.g. ``{"dropout": 0.1}``).
    init_from : str, optional
        ``encoder.safetensors`` / ``decoder.safetensors`` / ``.ckpt`` to start from
        (:func:`brainfm.models.read_weights`).
    n_classes : int
    classes : list of str, optional
        Class names, stored with the exported decoder.
    mode : {'full', 'linear', 'reset'}
        See the module docstring.
    pooling : {'mean', 'attention'}
        Token pooling of the head.
    head_dropout : float
    encoder_lr_factor : float
        Encoder learning rate as a fraction of ``lr`` when fine-tuning a pretrained
        encoder in ``full`` mode (smaller steps keep pretrained features).
    subject_layers : bool
        Per-subject layers for the training subjects (always on in ``reset`` mode).
    subject_channels : dict, optional
        Filled in by fit from the datamodule; set it only to rebuild a module by hand.
    hybrid : bool or dict, optional
        Hybrid head: pooled tokens plus the window's neurodynamics features (see the module
        docstring). A decoder given as ``init_from`` keeps its own setting.
    feature_stats_windows : int
        Training windows the hybrid features' mean and std are fitted on.
    token_stats : bool
        Label-free per-subject token standardisation (see the module docstring).
    token_stats_source : {'session', 'calibration'}
        Where validation, test and prediction subjects' token statistics come from.
    token_stats_seconds : float
        Calibration length of ``token_stats_source='calibration'``.
    token_stats_windows : int
        Windows per training subject that its statistics are re-estimated on each epoch.
    reset_subjects : list of str, optional
        Filled in by a reset-tuning fit, saved in checkpoints and ``decoder.safetensors`` and
        read back from ``init_from``: the subjects whose layers were trained (with
        ``token_stats``, their statistics are not re-estimated).
    lr, weight_decay, warmup_steps, min_lr_factor, class_weights, label_smoothing
        See :class:`~brainfm.tasks.classify.ClassifierModule` and :class:`~brainfm.tasks.base.BrainTask`.
    """

    def __init__(
        self,
        model: str | dict[str, Any] | ModelConfig = "tiny",
        model_overrides: dict[str, Any] | None = None,
        init_from: str | None = None,
        n_classes: int = 2,
        classes: list[str] | None = None,
        mode: str = "full",
        pooling: str = "mean",
        head_dropout: float = 0.1,
        encoder_lr_factor: float = 0.2,
        subject_layers: bool = False,
        subject_channels: dict[str, int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        min_lr_factor: float = 0.01,
        class_weights: str | list[float] | None = "balanced",
        label_smoothing: float = 0.0,
        hybrid: bool | dict[str, Any] | None = None,
        feature_stats_windows: int = 2048,
        token_stats: bool = False,
        token_stats_source: str = "session",
        token_stats_seconds: float = 60.0,
        token_stats_windows: int = 64,
        reset_subjects: list[str] | None = None,
    ) -> None:
        super().__init__(n_classes, class_weights)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if token_stats and subject_layers:
            raise ValueError("token_stats sets the subject layers from statistics; it excludes subject_layers, "
                             "which trains them with the trunk (mode='reset' may start from the statistics)")
        if token_stats_source not in TOKEN_STATS_SOURCES:
            raise ValueError(f"token_stats_source must be one of {TOKEN_STATS_SOURCES}, got {token_stats_source!r}")
        if mode == "reset" and init_from is None and not subject_channels:
            raise ValueError("mode='reset' adapts a fine-tuned decoder: give init_from")
        if isinstance(model, ModelConfig):
            model = model.to_dict()
        self.save_hyperparameters()
        weights = read_weights(init_from) if init_from is not None else None
        if weights is not None and mode == "reset" and weights.kind != "decoder":
            raise ValueError(f"mode='reset' needs a fine-tuned decoder, {init_from} holds only an encoder")
        config = resolve_config(weights.config if weights is not None else model, model_overrides)
        self.config = config
        source_subjects = dict(subject_channels or {})
        window_s = None  # a decoder's training window, kept when fine-tuning it further
        if weights is not None and weights.kind == "decoder":
            dec = weights.decoder
            if dec["n_classes"] != n_classes:
                raise ValueError(f"{init_from} has {dec['n_classes']} classes, the task has {n_classes}")
            if dec.get("token_stats") and not token_stats:
                raise ValueError(f"{init_from} was trained with label-free token statistics (its head reads each "
                                 "subject's standardised tokens): set the DecodeModule's token_stats: true")
            pooling = dec["pooling"]
            source_subjects = {**dec["subject_channels"], **source_subjects}
            classes = classes or dec.get("classes")
            hybrid = dec.get("hybrid")
            window_s = dec.get("window_s")
        spec = hybrid_spec(hybrid)
        self.feature_spec = TargetSpec(**spec) if spec is not None else None
        n_features = len(target_names(self.feature_spec)) if spec is not None else 0
        self.decoder = BrainDecoder(config, n_classes, pooling, head_dropout, source_subjects, classes,
                                    n_features, spec, token_stats=token_stats, window_s=window_s)
        # Checkpoints carry the resolved architecture, so they rebuild without the init file:
        # DecodeModule.load_from_checkpoint(path, init_from=None).
        self.hparams.update(model=config.to_dict(), model_overrides=None, pooling=pooling,
                            classes=self.decoder.classes, subject_channels=dict(source_subjects) or None,
                            hybrid=spec)
        if weights is not None:
            missing, unexpected = self.decoder.load_state_dict(weights.state, strict=False)
            expect_missing = weights.kind == "encoder" or bool(subject_channels)
            bad = [k for k in missing if not (expect_missing and not k.startswith("encoder."))]
            if bad or unexpected:
                raise ValueError(f"{init_from} does not match the model: missing {bad[:5]}, unexpected {unexpected[:5]}")
        self._pretrained_encoder = weights is not None
        self._from_decoder = weights is not None and weights.kind == "decoder"
        if self._from_decoder:
            self.decoder.normalization = weights.normalization
            tuned = sorted(set(reset_subjects or ()) | set(weights.extra.get("reset_subjects") or ()))
            self.hparams.reset_subjects = tuned or None  # trained layers: never re-set from statistics
        self._apply_freezing()

    # -- set-up ---------------------------------------------------------------------------
    def _apply_freezing(self) -> None:
        mode = self.hparams.mode
        self.decoder.requires_grad_(mode == "full")
        if mode == "linear":
            self.decoder.head.requires_grad_(True)
            self.decoder.subjects.requires_grad_(True)

    def _connect_normalization(self) -> None:
        """Take the datamodule's per-subject statistics; the method must match the decoder's."""
        summary = self.data_summary
        if summary is None:
            return
        data_method = (summary.normalization or {}).get("method")
        prior = self.decoder.normalization
        prior_method = json.loads(prior[1])["method"] if prior is not None else None
        if (self._from_decoder or prior is not None) and prior_method != data_method:
            raise ValueError(f"the decoder was trained on windows with normalize={prior_method!r} but the data has "
                             f"normalize={data_method!r}; set the DecodingDataModule's normalize to {prior_method!r}")
        normalizer = getattr(self.trainer.datamodule, "normalizer", None)
        if normalizer is None:
            return
        self.decoder.normalization = normalizer.added_to(prior)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the handshake and class weights
        self._connect_normalization()
        self._add_token_stats_layers()
        if stage != "fit":
            return
        window_s = getattr(getattr(self.trainer.datamodule, "hparams", None), "window_s", None)
        if window_s is not None:  # saved with the decoder: the default window of detect/adapt/export
            # a decoder from init_from trained on another length: say so (reset-tuning fits its layers on this one)
            self.decoder.window_s = window_for(self.decoder.window_s, window_s, window_s)
        hp = self.hparams
        if hp.mode == "reset" or hp.subject_layers:
            if self.data_summary is None:
                raise ValueError("subject layers need a DecodingDataModule (for the subjects and their channels)")
            new = self.data_summary.subject_channels()
            for subject, n in new.items():
                if hp.mode == "reset" or subject not in self.decoder.subjects:
                    self.decoder.subjects.add(subject, n)  # fresh identity layers
            self.hparams.subject_channels = dict(self.decoder.subjects.channels)
            if hp.mode == "reset":
                start = "identity"
                if hp.token_stats:  # start from the FiLM the frozen head expects: standardised tokens
                    adapt_dataset(self.decoder, self.trainer.datamodule.sets["train"], "session", device=self.device)
                    start = "label-free token statistics"
                rank_zero_info(f"reset-tuning: fresh subject layers for {sorted(new)} from {start}; "
                               "trunk and head frozen")
                for subject in new:
                    self.decoder.subjects.get(subject).requires_grad_(True)
                self.hparams.reset_subjects = sorted(set(hp.reset_subjects or ()) | set(new))

    def on_fit_start(self) -> None:
        """Fit the hybrid features' mean and std on training windows (a decoder loaded with
        ``init_from`` keeps the statistics it was trained with)."""
        if self.feature_spec is None or self._from_decoder:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "statistics_batches"):
            raise ValueError("the hybrid head fits its feature statistics on a brainfm DataModule; fit with one")
        norm = TargetNormalizer(self.decoder.n_features)
        for batch in datamodule.statistics_batches(self.hparams.feature_stats_windows):
            norm.update(self.batch_features(batch))
        self.decoder.feature_mean.copy_(norm.mean.float())
        self.decoder.feature_std.copy_(norm.std.float())
        rank_zero_info(f"hybrid head: feature statistics from {int(norm.count.max())} training windows")

    @torch.no_grad()
    def batch_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """Raw hybrid features ``(B, K)`` of a batch (the windows as the decoder sees them)."""
        x = batch["x"].to(self.device)
        return compute_targets(x, self.config.sfreq, batch["channel_mask"].to(self.device),
                               batch["sensor_geometry"].to(self.device), self.feature_spec)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Recreate subject layers a checkpoint holds but this instance lacks (e.g. a
        reset-tuned subject when the module was built from the config alone)."""
        for subject, n in (checkpoint.get("hyper_parameters", {}).get("subject_channels") or {}).items():
            if subject not in self.decoder.subjects:
                self.decoder.subjects.add(subject, n)
        norm = checkpoint.get("normalization")
        if norm is not None:
            self.decoder.normalization = (norm["tensors"], norm["metadata"])
        if self.hparams.token_stats and "state_dict" in checkpoint:
            # token-statistics layers of subjects the checkpoint never saw (e.g. the test subjects
            # of `brainfm test --ckpt_path`) keep theirs: they are set from data, not trained
            state = checkpoint["state_dict"]
            for key, value in self.state_dict().items():
                if key.startswith("decoder.subjects.adapters.") and key not in state:
                    state[key] = value

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints carry the per-subject normalisation statistics (tensors and a JSON string)."""
        if self.decoder.normalization is not None:
            tensors, meta = self.decoder.normalization
            checkpoint["normalization"] = {"tensors": dict(tensors), "metadata": meta}

    def _add_token_stats_layers(self) -> None:
        """Identity layers for every subject of the data module, before any loop runs: Lightning
        records each module's train/eval mode when a loop starts, and a layer created inside a
        loop would keep the loop's eval mode afterwards."""
        if not self.hparams.token_stats:
            return
        for dataset in getattr(getattr(self.trainer, "datamodule", None), "sets", {}).values():
            if dataset is None:
                continue
            for subject, n in DataSummary.of(dataset).subject_channels().items():
                self.decoder.subjects.add(subject, n, reset=False).requires_grad_(False)
        self.hparams.subject_channels = dict(self.decoder.subjects.channels) or None

    def _adapt_tokens(self, part: str, training: bool = False) -> None:
        """Set the FiLM of every subject of ``part``'s windows from its token statistics."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "sets", {}).get(part)
        if not self.hparams.token_stats or dataset is None:
            return
        hp = self.hparams
        subjects = adapt_dataset(self.decoder, dataset, "session" if training else hp.token_stats_source,
                                 hp.token_stats_seconds, hp.token_stats_windows if training else None,
                                 device=self.device, seed=self.current_epoch, exclude=hp.reset_subjects or ())
        if not training:
            rank_zero_info(f"token statistics ({hp.token_stats_source}) for {part} subjects {subjects}")

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._adapt_tokens("val")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._adapt_tokens("test")

    def on_predict_epoch_start(self) -> None:
        self._adapt_tokens("test")  # the data modules predict on their test windows

    def on_train_epoch_start(self) -> None:
        if self.hparams.mode != "reset":  # reset-tuned layers are trained, not set
            self._adapt_tokens("train", training=True)
        if self.hparams.mode != "full":
            self.decoder.encoder.eval()  # frozen trunk: no dropout
            if self.hparams.mode == "reset":
                self.decoder.head.eval()

    def param_groups(self) -> list[dict[str, Any]]:
        hp = self.hparams
        if hp.mode == "full" and self._pretrained_encoder:
            enc = self.decay_groups(self.decoder.encoder.parameters(), hp.lr * hp.encoder_lr_factor)
            enc_ids = {id(p) for p in self.decoder.encoder.parameters()}
            rest = self.decay_groups((p for p in self.parameters() if id(p) not in enc_ids), hp.lr)
            return enc + rest
        return self.decay_groups(self.parameters(), hp.lr)

    # -- forward --------------------------------------------------------------------------
    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        features = self.batch_features(batch) if self.feature_spec is not None else None
        return self.decoder(batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"],
                            batch.get("subject"), features)

    # -- export ---------------------------------------------------------------------------
    export_file = "decoder.safetensors"

    def on_fit_end(self) -> None:
        """Export the trained decoder next to the logs as ``decoder.safetensors``: the best
        checkpoint of a monitoring ``ModelCheckpoint`` when there is one, else the last weights."""
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if getattr(ckpt, "monitor", None) else ""
        if best and os.path.isfile(best):
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            self.load_state_dict(state)
            rank_zero_info(f"exporting the best checkpoint {best}")
        super().on_fit_end()

    def export_safetensors(self, path: str | os.PathLike) -> None:
        extra = {"task": "decode", "mode": self.hparams.mode}
        if self.hparams.reset_subjects:
            extra["reset_subjects"] = list(self.hparams.reset_subjects)
        if self.decoder.normalization is not None:
            meta = json.loads(self.decoder.normalization[1])
            sources = sorted({m["source"] for m in meta["subjects"].values()})
            extra["normalization"] = {"method": meta["method"], "source": sources[0] if len(sources) == 1 else sources}
        save_decoder(self.decoder, path, extra=extra)
