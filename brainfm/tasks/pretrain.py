"""Masked-patch reconstruction pretraining (CBraMod-style) as a LightningModule.

A random half of the patches of every real channel is replaced by the encoder's mask
token; a small per-token head reconstructs them, and the loss is the MSE on masked patches
of real channels only, in the normalised units the encoder sees (physical units divided by
``ModelConfig.input_scale``), as in CBraMod's pretraining (Wang et al., ICLR 2025).

Batch keys read: ``x`` (B, C, T) float, ``channel_mask`` (B, C) bool, ``sensor_geometry``
(B, C, 6) float, ``sensor_type`` (B, C) int64 and ``sfreq`` (checked against the model);
with the neurodynamics objective also ``targets`` (B, K) when the store holds precomputed
targets. Other keys (``recording``, ``subject``, ``label``) are ignored.

Logged: ``train/loss``, ``train/samples_per_s``, ``train/tokens_per_s`` (wall time between
consecutive training steps, data loading and optimiser included; real-channel tokens),
``val/loss`` and ``val/loss_mean_baseline``: the loss of predicting every masked sample as
the mean of the visible samples of the same channel (zero if a channel has no visible
patch). A model that beats it has learned more than each channel's offset. ``val/loss``
is always the reconstruction loss, so runs with and without the neurodynamics objective
compare; with it, ``train/recon``, ``train/nsp`` and ``val/nsp`` are logged too.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import lightning.pytorch as pl
import torch

from brainfm.models.config import ModelConfig
from brainfm.models.encoder import BrainEncoder
from brainfm.models.heads import NeurodynamicsHead, ReconstructionHead, masked_mean
from brainfm.models.serialization import save_encoder


def random_patch_mask(
    channel_mask: torch.Tensor, n_patches: int, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bernoulli(``ratio``) mask ``(B, C, S)`` over the patches of real channels only."""
    b, c = channel_mask.shape
    u = torch.rand(b, c, n_patches, generator=generator, device="cpu").to(channel_mask.device)
    return (u < ratio) & channel_mask.unsqueeze(-1)  # (B, C, S)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the samples of masked patches; ``(B, C, S, P)`` inputs."""
    w = patch_mask.unsqueeze(-1).to(pred.dtype)  # (B, C, S, 1)
    denom = (w.sum() * pred.shape[-1]).clamp_min(1.0)
    return ((pred - target) ** 2 * w).sum() / denom


def mean_baseline(target: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Predict each patch as the mean of its channel's visible samples: ``(B, C, S, P)``."""
    visible = (~patch_mask).unsqueeze(-1).to(target.dtype)  # (B, C, S, 1)
    total = (target * visible).sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    count = visible.sum(dim=(2, 3), keepdim=True) * target.shape[-1]  # (B, C, 1, 1)
    return (total / count.clamp_min(1.0)).expand_as(target)  # (B, C, S, P)


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_factor: float = 0.0) -> float:
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then cosine to ``min_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PretrainModule(pl.LightningModule):
    """Masked patch reconstruction on a :class:`~brainfm.models.BrainEncoder`.

    Parameters
    ----------
    model : str, dict or ModelConfig
        Preset name (``'tiny'``, ``'small'``, ``'base'``), a ``ModelConfig.to_dict()``
        dict, or a config.
    model_overrides : dict, optional
        Fields replaced in the preset (e.g. ``{"dropout": 0.0}``).
    mask_ratio : float
        Probability that a patch of a real channel is masked.
    lr, weight_decay : float
        AdamW settings; biases, norms and embeddings get no weight decay.
    warmup_steps, max_steps : int
        Linear warm-up then cosine decay to ``min_lr_factor * lr`` at ``max_steps``.
    min_lr_factor : float
        Final LR as a fraction of ``lr``.
    compile : bool
        ``torch.compile`` each criss-cross block in :meth:`configure_model` (the input
        checks of the encoder stay eager).
    nsp_weight : float
        Weight λ of the neurodynamics loss: ``L = L_masked_recon + λ·L_nsp``. 0 turns it
        off. A :class:`~brainfm.models.NeurodynamicsHead` on the pooled tokens of the
        *masked* input predicts the z-scored target vector of the *unmasked* window
        (DeeperBrain, 2026).
    targets : dict, optional
        :class:`brainfm.targets.TargetSpec` fields (bands, which targets, Welch settings).
    target_stats_windows : int
        Training windows used to compute the target normalisation (mean, std) before
        the first step; the statistics are buffers, saved with every checkpoint.
    """

    def __init__(
        self,
        model: str | dict[str, Any] | ModelConfig = "tiny",
        model_overrides: dict[str, Any] | None = None,
        mask_ratio: float = 0.5,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        max_steps: int = 10_000,
        min_lr_factor: float = 0.01,
        compile: bool = False,
        nsp_weight: float = 0.0,
        targets: dict[str, Any] | None = None,
        target_stats_windows: int = 1024,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if isinstance(model, ModelConfig):
            config = model
            model = config.to_dict()
        elif isinstance(model, dict):
            config = ModelConfig.from_dict(model)
        else:
            config = ModelConfig.from_name(model)
        if model_overrides:
            config = config.replace(**model_overrides)
        self.save_hyperparameters()
        self.config = config
        self.encoder = BrainEncoder(config)
        self.head = ReconstructionHead(config.d_model, config.patch_size, config.activation)
        self._last_step_time: float | None = None
        self.target_spec = None
        if nsp_weight < 0:
            raise ValueError(f"nsp_weight must be >= 0, got {nsp_weight}")
        if nsp_weight > 0:
            from brainfm.targets import TargetNormalizer, TargetSpec, target_names  # noqa: PLC0415

            self.target_spec = TargetSpec(**(targets or {}))
            self.target_names = target_names(self.target_spec)
            self.nsp_head = NeurodynamicsHead(config.d_model, len(self.target_names))
            self.target_norm = TargetNormalizer(len(self.target_names))  # statistics saved in checkpoints

    def configure_model(self) -> None:
        if self.hparams.compile:
            for block in self.encoder.blocks:
                block.compile()

    # -- loss -------------------------------------------------------------------------
    def _check_sfreq(self, batch: dict[str, Any]) -> None:
        sfreq = batch.get("sfreq")
        if sfreq is None:
            return
        sfreq = torch.as_tensor(sfreq).flatten()
        if (sfreq - self.config.sfreq).abs().max() > 1e-6:
            raise ValueError(
                f"sampling rate {float(sfreq[0]):g} Hz does not match the model's "
                f"{self.config.sfreq:g} Hz; resample the data first"
            )

    def masked_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Masked reconstruction loss of one batch.

        Returns
        -------
        dict
            ``loss`` (scalar), ``baseline`` (copy-the-mean loss, no grad), ``patch_mask``
            ``(B, C, S)`` and ``n_tokens`` (real-channel tokens, a Python int).
        """
        self._check_sfreq(batch)
        x, mask = batch["x"], batch["channel_mask"]
        target = self.encoder.patchify(x, batch["sensor_type"], mask)  # (B, C, S, P)
        patch_mask = random_patch_mask(mask, target.shape[2], self.hparams.mask_ratio, generator)
        tokens = self.encoder(x, batch["sensor_geometry"], batch["sensor_type"], mask, patch_mask)
        pred = self.head(tokens)  # (B, C, S, P)
        with torch.no_grad():
            baseline = masked_mse(mean_baseline(target, patch_mask), target, patch_mask)
        recon = masked_mse(pred, target, patch_mask)
        out = {
            "loss": recon,
            "recon": recon,
            "baseline": baseline,
            "patch_mask": patch_mask,
            "n_tokens": int(mask.sum()) * target.shape[2],
        }
        if self.target_spec is not None:
            z = self.target_norm(self.batch_targets(batch))  # (B, K), z-scored
            valid = torch.isfinite(z)
            err = (self.nsp_head(tokens, mask) - torch.nan_to_num(z)) ** 2 * valid  # (B, K)
            out["nsp"] = err.sum() / valid.sum().clamp_min(1)
            out["loss"] = recon + self.hparams.nsp_weight * out["nsp"]
        return out

    @torch.no_grad()
    def batch_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """The raw target vectors ``(B, K)`` of a batch: precomputed ones from the store
        when the batch carries them, else computed here, on the batch's device."""
        if "targets" in batch:
            return batch["targets"].float()
        from brainfm.targets import compute_targets  # noqa: PLC0415

        return compute_targets(
            batch["x"].float(), self.config.sfreq, batch["channel_mask"], batch["sensor_geometry"], self.target_spec
        )

    def on_fit_start(self) -> None:
        if self.target_spec is not None and not bool(self.target_norm.count.gt(0).any()):
            self.fit_target_stats(self.trainer.datamodule)

    @torch.no_grad()
    def fit_target_stats(self, datamodule: Any) -> None:
        """Mean and std of the target vector over evenly spaced training windows."""
        from brainfm.data.dataset import FixedWindows, collate_windows  # noqa: PLC0415

        train = datamodule.train_set
        windows = FixedWindows(
            train.store, train.window / train.sfreq, train.stride / train.sfreq, recordings=train.recordings,
            channel_types=train.channel_types, positioned_only=train.positioned_only, targets=train.targets,
        )
        n = min(len(windows), self.hparams.target_stats_windows)
        picks = torch.linspace(0, len(windows) - 1, n).round().long().unique().tolist()
        for lo in range(0, len(picks), 64):
            batch = collate_windows([windows[k] for k in picks[lo : lo + 64]])
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            self.target_norm.update(self.batch_targets(batch))

    # -- Lightning hooks --------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.masked_loss(batch)
        b = batch["x"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=b)
        if "nsp" in out:
            self.log("train/recon", out["recon"], batch_size=b)
            self.log("train/nsp", out["nsp"], batch_size=b)
        now = time.perf_counter()
        if self._last_step_time is not None:
            dt = max(now - self._last_step_time, 1e-9)
            self.log("train/samples_per_s", b / dt, batch_size=b)
            self.log("train/tokens_per_s", out["n_tokens"] / dt, batch_size=b)
        self._last_step_time = now
        return out["loss"]

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None  # do not count the gap between epochs

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # The same masks every validation run, so val/loss is comparable across epochs.
        gen = torch.Generator().manual_seed(batch_idx)
        out = self.masked_loss(batch, generator=gen)
        b = batch["x"].shape[0]
        self.log("val/loss", out["recon"], prog_bar=True, batch_size=b, sync_dist=True)
        if "nsp" in out:
            self.log("val/nsp", out["nsp"], batch_size=b, sync_dist=True)
        self.log("val/loss_mean_baseline", out["baseline"], batch_size=b, sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(batch_idx)
        out = self.masked_loss(batch, generator=gen)
        b = batch["x"].shape[0]
        self.log("test/loss", out["recon"], batch_size=b, sync_dist=True)
        self.log("test/loss_mean_baseline", out["baseline"], batch_size=b, sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Window embeddings: encoder tokens mean-pooled over real channels and patches."""
        tokens = self.encoder(batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"])
        pooled = masked_mean(tokens, batch["channel_mask"])  # (B, D)
        return {"embedding": pooled, "recording": batch["recording"], "start": batch["start"]}

    def configure_optimizers(self) -> dict[str, Any]:
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)}
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        hp = self.hparams
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, hp.warmup_steps, hp.max_steps, hp.min_lr_factor)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_end(self) -> None:
        """Export the trained encoder next to the logs as ``encoder.safetensors``."""
        # Only next to real logs: without a logger, Trainer.log_dir is the working directory.
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if log_dir is not None and self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            self.export_safetensors(os.path.join(log_dir, "encoder.safetensors"))

    # -- export -----------------------------------------------------------------------
    def export_safetensors(self, path: str | os.PathLike) -> None:
        """Write encoder weights and config as safetensors (read back with
        :func:`brainfm.models.load_pretrained`); the reconstruction head is not exported."""
        extra = {"task": "pretrain", "mask_ratio": self.hparams.mask_ratio}
        save_encoder(self.encoder, path, extra=extra)
