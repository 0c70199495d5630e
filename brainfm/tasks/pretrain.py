"""Masked-patch reconstruction pretraining (CBraMod-style) as a LightningModule.

A random half of the patches of every real channel is replaced by the encoder's mask
token; a small per-token head reconstructs them, and the loss is the MSE on masked patches
of real channels only, in the normalised units the encoder sees (physical units divided by
``ModelConfig.input_scale``), as in CBraMod's pretraining (Wang et al., ICLR 2025).

Batch keys read: ``x`` (B, C, T) float, ``channel_mask`` (B, C) bool, ``sensor_geometry``
(B, C, 6) float, ``sensor_type`` (B, C) int64 and ``sfreq`` (checked against the model, as
the DataModule's summary is in :class:`~brainfm.tasks.base.BrainTask`'s handshake);
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

import os
import time
from typing import Any, Iterable

import torch

from brainfm.data.datamodule import BrainDataModule
from brainfm.models.config import ModelConfig, resolve_config
from brainfm.models.encoder import BrainEncoder
from brainfm.models.heads import NeurodynamicsHead, ReconstructionHead, masked_mean
from brainfm.models.serialization import save_encoder
from brainfm.targets import TargetNormalizer, TargetSpec, compute_targets, target_names
from brainfm.tasks.base import BrainTask


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


class PretrainModule(BrainTask):
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
        config = resolve_config(model, model_overrides)
        if isinstance(model, ModelConfig):
            model = model.to_dict()  # hyperparameters stay plain YAML
        self.save_hyperparameters()
        self.config = config
        self.encoder = BrainEncoder(config)
        self.head = ReconstructionHead(config.d_model, config.patch_size, config.activation)
        self._last_step_time: float | None = None
        self.target_spec = None
        if nsp_weight < 0:
            raise ValueError(f"nsp_weight must be >= 0, got {nsp_weight}")
        if nsp_weight > 0:
            self.target_spec = TargetSpec(**(targets or {}))
            self.target_names = target_names(self.target_spec)
            self.nsp_head = NeurodynamicsHead(config.d_model, len(self.target_names))
            self.target_norm = TargetNormalizer(len(self.target_names))  # statistics saved in checkpoints

    def configure_model(self) -> None:
        if self.hparams.compile:
            for block in self.encoder.blocks:
                block.compile()

    # -- loss -------------------------------------------------------------------------
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
        self.check_batch_sfreq(batch)
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
        return compute_targets(
            batch["x"].float(), self.config.sfreq, batch["channel_mask"], batch["sensor_geometry"], self.target_spec
        )

    def on_fit_start(self) -> None:
        if self.target_spec is not None and not bool(self.target_norm.count.gt(0).any()):
            datamodule = self.trainer.datamodule
            if not isinstance(datamodule, BrainDataModule):
                raise ValueError("the neurodynamics objective (nsp_weight > 0) draws its target statistics "
                                 "from a brainfm DataModule (PretrainDataModule); fit with one")
            self.fit_target_stats(datamodule.statistics_batches(self.hparams.target_stats_windows))

    @torch.no_grad()
    def fit_target_stats(self, batches: Iterable[dict[str, Any]]) -> None:
        """Mean and std of the target vector over ``batches`` (by default evenly spaced
        training windows, :meth:`brainfm.data.datamodule.BrainDataModule.statistics_batches`)."""
        for batch in batches:
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

    def schedule_steps(self) -> int:
        """The cosine schedule ends at ``max_steps`` (a constructor argument, as in the configs)."""
        return self.hparams.max_steps

    # -- export -----------------------------------------------------------------------
    export_file = "encoder.safetensors"

    def export_safetensors(self, path: str | os.PathLike) -> None:
        """Write encoder weights and config as safetensors (read back with
        :func:`brainfm.models.load_pretrained`); the reconstruction head is not exported."""
        extra = {"task": "pretrain", "mask_ratio": self.hparams.mask_ratio}
        save_encoder(self.encoder, path, extra=extra)
