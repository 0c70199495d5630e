"""What every supervised classifier in brainfm shares: loss, metrics, optimiser.

:class:`ClassifierModule` is the base of :class:`brainfm.tasks.DecodeModule` (brainfm
models) and :class:`brainfm.tasks.BaselineModule` (braindecode models), so both report
the same metrics, computed the same way, on the same batches.

Metrics (torchmetrics, per epoch): ``balanced_accuracy`` (macro-averaged recall),
``kappa`` (Cohen's κ), ``f1_weighted`` and ``auroc`` (macro one-vs-rest; for two
classes, the binary AUROC), logged as ``val/...`` and ``test/...``.

Class imbalance: with ``class_weights="balanced"`` (the default) the cross-entropy
weights each class by ``n / (n_classes · n_c)`` over the training windows, the
scikit-learn convention, so the loss, like balanced accuracy, counts classes equally.
The weights are logged at the start of fit.
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassCohenKappa, MulticlassF1Score

from brainfm.tasks.pretrain import warmup_cosine


def classification_metrics(n_classes: int, prefix: str) -> MetricCollection:
    """Balanced accuracy, Cohen's kappa, weighted F1 and AUROC for ``n_classes``."""
    return MetricCollection(
        {
            "balanced_accuracy": MulticlassAccuracy(n_classes, average="macro"),
            "kappa": MulticlassCohenKappa(n_classes),
            "f1_weighted": MulticlassF1Score(n_classes, average="weighted"),
            "auroc": MulticlassAUROC(n_classes, average="macro"),
        },
        prefix=prefix,
    )


def balanced_class_weights(counts: Sequence[int]) -> torch.Tensor:
    """``n / (n_classes * n_c)`` per class; classes absent from training get weight 0."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class ClassifierModule(pl.LightningModule):
    """Base LightningModule for window classification.

    Subclasses build their network in ``__init__`` and implement :meth:`logits`.

    Parameters
    ----------
    n_classes : int
    lr, weight_decay : float
        AdamW; biases, norms and embeddings get no weight decay.
    warmup_steps : int
        Linear warm-up, then cosine decay to ``min_lr_factor · lr`` at the last step of fit
        (``trainer.estimated_stepping_batches``).
    class_weights : 'balanced', list of float or None
        Cross-entropy class weights (see the module docstring).
    label_smoothing : float
    """

    def __init__(
        self,
        n_classes: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        min_lr_factor: float = 0.01,
        class_weights: str | list[float] | None = "balanced",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if class_weights not in (None, "balanced") and not isinstance(class_weights, (list, tuple)):
            raise ValueError(f"class_weights must be 'balanced', a list or None, got {class_weights!r}")
        self.n_classes = n_classes
        self.val_metrics = classification_metrics(n_classes, "val/")
        self.test_metrics = classification_metrics(n_classes, "test/")
        self.class_weight: torch.Tensor | None = None

    # -- subclasses ---------------------------------------------------------------------
    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters as AdamW groups; override for per-part learning rates."""
        return self._decay_groups(self.parameters(), self.hparams.lr)

    # -- shared -------------------------------------------------------------------------
    def _decay_groups(self, params, lr: float) -> list[dict[str, Any]]:
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)}
        decay, no_decay = [], []
        for p in params:
            if p.requires_grad:
                (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay, "lr": lr},
                  {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
        return [g for g in groups if g["params"]]

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        cw = self.hparams.class_weights
        if cw == "balanced":
            dm = getattr(self.trainer, "datamodule", None)
            if dm is None or not hasattr(dm, "class_counts"):
                raise ValueError("class_weights='balanced' needs a datamodule with class_counts() (DecodingDataModule)")
            counts = dm.class_counts("train")
            self.class_weight = balanced_class_weights(counts)
            rank_zero_info(f"training windows per class {counts.tolist()}; balanced class weights "
                           f"{[round(w, 3) for w in self.class_weight.tolist()]}")
        elif cw is not None:
            if len(cw) != self.n_classes:
                raise ValueError(f"{len(cw)} class weights for {self.n_classes} classes")
            self.class_weight = torch.tensor(cw, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weight is None else self.class_weight.to(logits.device)
        return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.logits(batch)
        loss = self.loss(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: MetricCollection, prefix: str) -> None:
        logits = self.logits(batch).float()
        self.log(f"{prefix}loss", self.loss(logits, batch["label"]), batch_size=len(batch["label"]))
        metrics.update(torch.softmax(logits, dim=-1), batch["label"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val/")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test/")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        probs = torch.softmax(self.logits(batch).float(), dim=-1)
        out = {"probs": probs, "pred": probs.argmax(-1), "recording": batch["recording"],
               "subject": batch["subject"], "start": batch["start"]}
        if "label" in batch:
            out["label"] = batch["label"]
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.param_groups())
        hp = self.hparams
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_factor)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
