"""Fine-tuning a brainfm model on labelled windows: full, linear probe, reset-tuning.

Modes (``mode``):

``full``
    Every parameter trains. With ``init_from`` a pretrained encoder, the encoder learns at
    ``encoder_lr_factor · lr`` and the new head at ``lr``; without it, the model trains
    from scratch.
``linear``
    Linear probe: the encoder is frozen (and kept in eval mode); only the pooling head
    trains.
``reset``
    Cross-subject reset-tuning (MindBridge, Wang et al., CVPR 2024; see
    :mod:`brainfm.models.subject`). ``init_from`` is a fine-tuned decoder
    (``decoder.safetensors`` or a DecodeModule checkpoint); every subject in the training
    set gets fresh subject-specific layers, and only those layers train, with the trunk
    and head frozen. Use it with ``DecodingDataModule(adapt_subjects=[...],
    adapt_seconds=...)``, which trains on the first seconds of each new subject and tests
    on the rest.

``subject_layers=True`` (modes ``full`` and ``linear``) gives every training subject its
own layers, trained jointly with the trunk as MindBridge does, so the trunk is pushed
towards what subjects share.

At the end of fit the decoder is written next to the logs as ``decoder.safetensors``
(:func:`brainfm.models.load_decoder`), the input of ``brainfm quantize``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from safetensors.torch import load_file

from brainfm.models.config import ModelConfig
from brainfm.models.decoder import BrainDecoder
from brainfm.models.serialization import DECODER_FORMAT, FORMAT, save_decoder
from brainfm.tasks.classify import ClassifierModule

MODES = ("full", "linear", "reset")


def _resolve_config(model: str | dict[str, Any] | ModelConfig, overrides: dict[str, Any] | None) -> ModelConfig:
    if isinstance(model, ModelConfig):
        config = model
    elif isinstance(model, dict):
        config = ModelConfig.from_dict(model)
    else:
        config = ModelConfig.from_name(model)
    return config.replace(**overrides) if overrides else config


def read_init(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata from an ``init_from`` file, without unpickling code.

    Accepts ``encoder.safetensors`` (pretraining), ``decoder.safetensors`` (fine-tuning)
    and Lightning ``.ckpt`` files of :class:`PretrainModule` or :class:`DecodeModule`
    (read with ``torch.load(weights_only=True)``). Returns the state dict, with keys
    relative to :class:`BrainDecoder` (``encoder.*``, ``head.*``, ``subjects.*``), and
    ``{"kind": "encoder" | "decoder", "config": dict, "decoder": dict | None}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no such file {path}")
    if path.suffix == ".safetensors":
        from brainfm.models.serialization import read_metadata  # noqa: PLC0415

        meta = read_metadata(path, (FORMAT, DECODER_FORMAT))
        state = load_file(os.fspath(path))
        if meta["format"] == FORMAT:
            return {f"encoder.{k}": v for k, v in state.items()}, {"kind": "encoder", "config": meta["config"], "decoder": None}
        return state, {"kind": "decoder", "config": meta["config"], "decoder": meta["decoder"]}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    config = _resolve_config(hp.get("model", "tiny"), hp.get("model_overrides")).to_dict()
    state = ckpt["state_dict"]
    if any(k.startswith("decoder.") for k in state):
        state = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        dec = {"n_classes": hp["n_classes"], "pooling": hp.get("pooling", "mean"),
               "subject_channels": hp.get("subject_channels") or {}, "classes": hp.get("classes")}
        return state, {"kind": "decoder", "config": config, "decoder": dec}
    state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    if not state:
        raise ValueError(f"{path} holds neither a brainfm encoder nor a decoder")
    return state, {"kind": "encoder", "config": config, "decoder": None}


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
        (:func:`read_init`).
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
    lr, weight_decay, warmup_steps, min_lr_factor, class_weights, label_smoothing
        See :class:`~brainfm.tasks.classify.ClassifierModule`.
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
    ) -> None:
        super().__init__(n_classes, lr, weight_decay, warmup_steps, min_lr_factor, class_weights, label_smoothing)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "reset" and init_from is None and not subject_channels:
            raise ValueError("mode='reset' adapts a fine-tuned decoder: give init_from")
        if isinstance(model, ModelConfig):
            model = model.to_dict()
        self.save_hyperparameters()
        state, meta = (None, None)
        if init_from is not None:
            state, meta = read_init(init_from)
            if mode == "reset" and meta["kind"] != "decoder":
                raise ValueError(f"mode='reset' needs a fine-tuned decoder, {init_from} holds only an encoder")
            config = ModelConfig.from_dict(meta["config"])
            if model_overrides:
                config = config.replace(**model_overrides)
        else:
            config = _resolve_config(model, model_overrides)
        self.config = config
        source_subjects = dict(subject_channels or {})
        if meta is not None and meta["kind"] == "decoder":
            dec = meta["decoder"]
            if dec["n_classes"] != n_classes:
                raise ValueError(f"{init_from} has {dec['n_classes']} classes, the task has {n_classes}")
            pooling = dec["pooling"]
            source_subjects = {**dec["subject_channels"], **source_subjects}
            classes = classes or dec.get("classes")
        self.decoder = BrainDecoder(config, n_classes, pooling, head_dropout, source_subjects, classes)
        # Checkpoints carry the resolved architecture, so they rebuild without the init file:
        # DecodeModule.load_from_checkpoint(path, init_from=None).
        self.hparams.update(model=config.to_dict(), model_overrides=None, pooling=pooling,
                            classes=self.decoder.classes, subject_channels=dict(source_subjects) or None)
        if state is not None:
            missing, unexpected = self.decoder.load_state_dict(state, strict=False)
            expect_missing = meta["kind"] == "encoder" or bool(subject_channels)
            bad = [k for k in missing if not (expect_missing and not k.startswith("encoder."))]
            if bad or unexpected:
                raise ValueError(f"{init_from} does not match the model: missing {bad[:5]}, unexpected {unexpected[:5]}")
        self._pretrained_encoder = meta is not None
        self._apply_freezing()

    # -- set-up ---------------------------------------------------------------------------
    def _apply_freezing(self) -> None:
        mode = self.hparams.mode
        self.decoder.requires_grad_(mode == "full")
        if mode == "linear":
            self.decoder.head.requires_grad_(True)
            self.decoder.subjects.requires_grad_(True)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        hp = self.hparams
        dm = getattr(self.trainer, "datamodule", None)
        if hp.mode == "reset" or hp.subject_layers:
            if dm is None or not hasattr(dm, "subject_channels"):
                raise ValueError("subject layers need a DecodingDataModule (for the subjects and their channels)")
            new = dm.subject_channels("train")
            for subject, n in new.items():
                if hp.mode == "reset" or subject not in self.decoder.subjects:
                    self.decoder.subjects.add(subject, n)  # fresh identity layers
            self.hparams.subject_channels = dict(self.decoder.subjects.channels)
            if hp.mode == "reset":
                rank_zero_info(f"reset-tuning: fresh subject layers for {sorted(new)}; trunk and head frozen")
                for subject in new:
                    self.decoder.subjects.get(subject).requires_grad_(True)
        if dm is not None and getattr(dm, "sfreq", None) not in (None, self.config.sfreq):
            raise ValueError(f"the data are at {dm.sfreq} Hz, the model expects {self.config.sfreq} Hz")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Recreate subject layers a checkpoint holds but this instance lacks (e.g. a
        reset-tuned subject when the module was built from the config alone)."""
        for subject, n in (checkpoint.get("hyper_parameters", {}).get("subject_channels") or {}).items():
            if subject not in self.decoder.subjects:
                self.decoder.subjects.add(subject, n)

    def on_train_epoch_start(self) -> None:
        if self.hparams.mode != "full":
            self.decoder.encoder.eval()  # frozen trunk: no dropout
            if self.hparams.mode == "reset":
                self.decoder.head.eval()

    def param_groups(self) -> list[dict[str, Any]]:
        hp = self.hparams
        if hp.mode == "full" and self._pretrained_encoder:
            enc = self._decay_groups(self.decoder.encoder.parameters(), hp.lr * hp.encoder_lr_factor)
            enc_ids = {id(p) for p in self.decoder.encoder.parameters()}
            rest = self._decay_groups((p for p in self.parameters() if id(p) not in enc_ids), hp.lr)
            return enc + rest
        return self._decay_groups(self.parameters(), hp.lr)

    # -- forward --------------------------------------------------------------------------
    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.decoder(batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"],
                            batch.get("subject"))

    def on_fit_end(self) -> None:
        """Export the trained decoder next to the logs as ``decoder.safetensors``: the best
        checkpoint of a monitoring ``ModelCheckpoint`` when there is one, else the last weights."""
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if getattr(ckpt, "monitor", None) else ""
        if best and os.path.isfile(best):
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            self.load_state_dict(state)
            rank_zero_info(f"exporting the best checkpoint {best}")
        # Only next to real logs: without a logger, Trainer.log_dir is the working directory.
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if log_dir is not None and self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            self.export_safetensors(os.path.join(log_dir, "decoder.safetensors"))

    def export_safetensors(self, path: str | os.PathLike) -> None:
        save_decoder(self.decoder, path, extra={"task": "decode", "mode": self.hparams.mode})
