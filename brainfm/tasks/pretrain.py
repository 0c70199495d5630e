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
``val/loss`` and two trivial baselines on the same masked patches:
``val/loss_mean_baseline``, predicting every masked sample as the mean of the visible
samples of the same channel (zero if a channel has no visible patch), and
``val/loss_neighbour_baseline``, interpolating each masked patch from the same patch of the
nearest channels of its type that are visible (inverse-distance weights, the spherical-
spline-free cousin of MNE's ``interpolate_bads``). A model that beats the first has learned
more than each channel's offset; one that beats the second has learned more than spatial
smoothness. ``val/loss`` is always the reconstruction loss, so runs with and without the
neurodynamics objective compare; with it, ``train/recon``, ``train/nsp`` and ``val/nsp``
are logged too.

Relative reconstruction loss (``recon_scale='relative'``): the objective is the masked MSE
divided by the batch's copy-the-mean MSE (no gradient through the divisor), a normalised
MSE whose value 1 means "no better than each channel's mean". In physical units the
EEG reconstruction MSE sits near 0.01 (10-uV signals at the 100-uV input scale), so next to
the z-scored neurodynamics loss (near 1) it receives about 1 % of the gradient; measured
in the first ``small-10s`` run, whose held-out reconstruction stayed at copy-the-mean
(0.01221 against 0.01220) while the neurodynamics loss fell to 0.84. ``val/loss`` stays the
absolute MSE either way; ``val/recon_relative`` is logged beside it.

Per-modality balance (``loss_balance='type'``): the reconstruction loss is the mean over
channel types present in the batch of each type's masked MSE, so a batch that mixes 306
MEG channels with 19 EEG channels does not spend 94 % of its gradient on MEG.
"""

from __future__ import annotations

import csv
import os
import time
from typing import Any, Iterable

import torch
from lightning.pytorch.utilities import rank_zero_info

from brainfm.data.artifacts import summarize
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


def type_balanced_mse(
    pred: torch.Tensor, target: torch.Tensor, patch_mask: torch.Tensor, sensor_type: torch.Tensor, n_types: int
) -> torch.Tensor:
    """Mean over the channel types present of each type's masked MSE: ``(B, C, S, P)`` inputs,
    ``(B, C, S)`` mask, ``(B, C)`` type indices."""
    err = ((pred - target) ** 2).sum(-1) * patch_mask.to(pred.dtype)  # (B, C, S)
    onehot = torch.nn.functional.one_hot(sensor_type, n_types).to(pred.dtype)  # (B, C, n_types)
    sums = torch.einsum("bcs,bct->t", err, onehot)  # (n_types,)
    counts = torch.einsum("bcs,bct->t", patch_mask.to(pred.dtype), onehot) * pred.shape[-1]  # (n_types,)
    present = counts > 0
    return (sums[present] / counts[present]).mean() if bool(present.any()) else err.sum() * 0.0


def neighbour_baseline(
    target: torch.Tensor,
    patch_mask: torch.Tensor,
    sensor_geometry: torch.Tensor,
    sensor_type: torch.Tensor,
    channel_mask: torch.Tensor,
    k: int = 4,
) -> torch.Tensor:
    """Interpolate each masked patch from the ``k`` nearest real channels of the same type.

    Each channel's prediction at patch ``s`` is the inverse-distance-weighted mean of its
    neighbours' patch ``s`` over the neighbours whose patch ``s`` is visible; where none is,
    it falls back to :func:`mean_baseline`. ``(B, C, S, P)`` -> ``(B, C, S, P)``.
    """
    b, c, s, p = target.shape
    pos = sensor_geometry[..., :3].to(target.dtype)  # (B, C, 3)
    dist = torch.cdist(pos, pos)  # (B, C, C)
    usable = channel_mask[:, None, :] & (sensor_type[:, :, None] == sensor_type[:, None, :])  # (B, C, C)
    usable &= ~torch.eye(c, dtype=torch.bool, device=target.device)
    dist = torch.where(usable, dist.clamp_min(1e-4), torch.full_like(dist, float("inf")))
    k = min(k, max(c - 1, 1))
    near_d, near_i = dist.topk(k, dim=-1, largest=False)  # (B, C, k)
    visible = (~patch_mask & channel_mask[..., None]).to(target.dtype)  # (B, C, S)
    total = torch.zeros_like(target)
    weight = torch.zeros(b, c, s, 1, dtype=target.dtype, device=target.device)
    for j in range(k):
        idx = near_i[..., j]  # (B, C)
        w = torch.where(torch.isfinite(near_d[..., j]), 1.0 / near_d[..., j], torch.zeros_like(near_d[..., j]))  # (B, C)
        vis = torch.gather(visible, 1, idx[..., None].expand(b, c, s))  # (B, C, S)
        patches = torch.gather(target, 1, idx[..., None, None].expand(b, c, s, p))  # (B, C, S, P)
        wv = (w[..., None] * vis)[..., None]  # (B, C, S, 1)
        total += wv * patches
        weight += wv
    fallback = mean_baseline(target, patch_mask)
    return torch.where(weight > 0, total / weight.clamp_min(1e-12), fallback)  # (B, C, S, P)


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
    loss_balance : {'none', 'type'}
        ``'type'``: average the reconstruction loss over channel types (module docstring).
    recon_scale : {'absolute', 'relative'}
        ``'relative'``: train on the MSE divided by the copy-the-mean MSE (module docstring).
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
        loss_balance: str = "none",
        recon_scale: str = "absolute",
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if loss_balance not in ("none", "type"):
            raise ValueError(f"loss_balance must be 'none' or 'type', got {loss_balance!r}")
        if recon_scale not in ("absolute", "relative"):
            raise ValueError(f"recon_scale must be 'absolute' or 'relative', got {recon_scale!r}")
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
            baseline = self.recon_mse(mean_baseline(target, patch_mask), target, patch_mask, batch)
        recon = self.recon_mse(pred, target, patch_mask, batch)
        relative = recon / baseline.clamp_min(1e-12)
        out = {
            "loss": relative if self.hparams.recon_scale == "relative" else recon,
            "recon": recon,
            "recon_relative": relative.detach(),
            "baseline": baseline,
            "target": target,
            "patch_mask": patch_mask,
            "n_tokens": int(mask.sum()) * target.shape[2],
        }
        if self.target_spec is not None:
            z = self.target_norm(self.batch_targets(batch))  # (B, K), z-scored
            valid = torch.isfinite(z)
            err = (self.nsp_head(tokens, mask) - torch.nan_to_num(z)) ** 2 * valid  # (B, K)
            out["nsp"] = err.sum() / valid.sum().clamp_min(1)
            out["loss"] = out["loss"] + self.hparams.nsp_weight * out["nsp"]
        return out

    def recon_mse(self, pred: torch.Tensor, target: torch.Tensor, patch_mask: torch.Tensor,
                  batch: dict[str, Any]) -> torch.Tensor:
        """The reconstruction loss of ``pred``: plain or type-balanced masked MSE."""
        if self.hparams.loss_balance == "type":
            types = torch.where(batch["channel_mask"], batch["sensor_type"], torch.zeros_like(batch["sensor_type"]))
            return type_balanced_mse(pred, target, patch_mask, types, self.config.n_channel_types)
        return masked_mse(pred, target, patch_mask)

    @torch.no_grad()
    def neighbour_loss(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of :func:`neighbour_baseline` on the masked patches of ``out`` (:meth:`masked_loss`)."""
        types = torch.where(batch["channel_mask"], batch["sensor_type"], torch.zeros_like(batch["sensor_type"]))
        geometry = torch.nan_to_num(batch["sensor_geometry"])
        pred = neighbour_baseline(out["target"], out["patch_mask"], geometry, types, batch["channel_mask"])
        return self.recon_mse(pred, out["target"], out["patch_mask"], batch)

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
        self._write_rejections()
        self._check_target_set()
        if self.target_spec is not None and not bool(self.target_norm.count.gt(0).any()):
            datamodule = self.trainer.datamodule
            if not isinstance(datamodule, BrainDataModule):
                raise ValueError("the neurodynamics objective (nsp_weight > 0) draws its target statistics "
                                 "from a brainfm DataModule (PretrainDataModule); fit with one")
            self.fit_target_stats(datamodule.statistics_batches(self.hparams.target_stats_windows))

    def _check_target_set(self) -> None:
        """Precomputed targets must be the ones this module's spec computes, column for column."""
        datamodule = self.trainer.datamodule
        key = getattr(datamodule, "target_set", None)
        if self.target_spec is None:
            return
        if not key:
            rank_zero_info("neurodynamics targets: computed on the fly (no matching precomputed set in the store)")
            return
        entry = datamodule.train_set.store.target_set(key)
        rank_zero_info(f"neurodynamics targets: precomputed set {key!r} (windows normalised as "
                       f"{entry.get('normalization') or 'stored'})")
        names = list(entry["names"])
        if names != self.target_names:
            raise ValueError(
                f"the store's target set {key!r} holds {len(names)} targets ({', '.join(names[:4])}, ...) but the model's "
                f"targets spec computes {len(self.target_names)} ({', '.join(self.target_names[:4])}, ...); precompute "
                "them with the same groups (brainfm convert ... --targets W --targets-features ...) or set "
                "data target_set: null to compute them on the fly")

    def _write_rejections(self) -> None:
        """``rejections.csv`` in the log folder: windows checked and rejected per recording and rule."""
        rejections = getattr(self.trainer.datamodule, "rejections", None)
        log_dir = self.trainer.log_dir
        if not rejections or log_dir is None or not self.trainer.is_global_zero:
            return
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "rejections.csv")
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["recording", "windows", "rejected", "amplitude", "flat", "line"])
            for rid, counts in sorted(rejections.items()):
                writer.writerow([rid, *counts.as_dict().values()])
        total = summarize(rejections)
        rank_zero_info(f"artifact rejection: {total.rejected} of {total.windows} windows rejected "
                       f"(amplitude {total.amplitude}, flat {total.flat}, line {total.line}); per recording: {path}")

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
        self.log("train/recon_relative", out["recon_relative"], batch_size=b)
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
        self.log("val/recon_relative", out["recon_relative"], batch_size=b, sync_dist=True)
        self.log("val/loss_neighbour_baseline", self.neighbour_loss(batch, out), batch_size=b, sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(batch_idx)
        out = self.masked_loss(batch, generator=gen)
        b = batch["x"].shape[0]
        self.log("test/loss", out["recon"], batch_size=b, sync_dist=True)
        self.log("test/loss_mean_baseline", out["baseline"], batch_size=b, sync_dist=True)
        self.log("test/loss_neighbour_baseline", self.neighbour_loss(batch, out), batch_size=b, sync_dist=True)

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
        :func:`brainfm.models.load_pretrained`); the reconstruction head is not exported.

        When the datamodule split its subjects (``PretrainDataModule.split``), the file records
        which ones the weights were trained on and which only validated them, so an evaluation
        can check that its test subjects were never pretrained on
        (:func:`brainfm.pretrained.trained_on`)."""
        extra = {"task": "pretrain", "mask_ratio": self.hparams.mask_ratio}
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # not attached to a Trainer: nothing known of the data
            datamodule = None
        split = getattr(datamodule, "split", None)
        if split is not None:
            extra |= {"train_subjects": sorted(split.train), "val_subjects": sorted(split.val)}
        save_encoder(self.encoder, path, extra=extra)
