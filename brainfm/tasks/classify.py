"""What every supervised classifier in brainfm shares: loss, metrics, class weights.

The optimiser, schedule, handshake and export come from :class:`~brainfm.tasks.base.BrainTask`.

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

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassCohenKappa, MulticlassF1Score

from brainfm.tasks.base import BrainTask


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


class ClassifierModule(BrainTask):
    """Base LightningModule for window classification.

    Subclasses build their network in ``__init__`` and implement :meth:`logits`; the
    optimiser, schedule and handshake are :class:`~brainfm.tasks.base.BrainTask`'s.

    Parameters
    ----------
    n_classes : int
    class_weights : 'balanced', list of float or None
        Cross-entropy class weights (see the module docstring).

    Subclasses also take ``lr``, ``weight_decay`` (AdamW; biases, norms and embeddings get
    no weight decay), ``warmup_steps`` and ``min_lr_factor`` (linear warm-up, then cosine
    decay to ``min_lr_factor · lr`` at the last step of fit,
    ``trainer.estimated_stepping_batches``) and ``label_smoothing``, saved as
    hyperparameters and read by :class:`~brainfm.tasks.base.BrainTask` and :meth:`loss`.
    """

    def __init__(self, n_classes: int = 2, class_weights: str | list[float] | None = "balanced") -> None:
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

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the handshake: self.data_summary
        if stage != "fit":
            return
        cw = self.hparams.class_weights
        if cw == "balanced":
            summary = self.data_summary
            if summary is None or summary.class_counts is None:
                raise ValueError("class_weights='balanced' needs a datamodule with class counts (DecodingDataModule)")
            counts = summary.class_counts
            self.class_weight = balanced_class_weights(counts)
            rank_zero_info(f"training windows per class {list(counts)}; balanced class weights "
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

    def _fresh_outside_inference(self, metrics: MetricCollection, prefix: str) -> MetricCollection:
        """``metrics``, or new ones when its states are inference tensors used outside inference
        mode: a ``trainer.validate`` (inference mode) before ``trainer.fit`` (validation under
        ``no_grad``) left them so, and the first in-place update then failed."""
        if torch.is_inference_mode_enabled():
            return metrics
        states = [t for metric in metrics.values() for v in metric.metric_state.values()
                  for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]
        if not any(t.is_inference() for t in states):
            return metrics
        return classification_metrics(self.n_classes, prefix).to(self.device)

    def on_validation_epoch_start(self) -> None:
        self.val_metrics = self._fresh_outside_inference(self.val_metrics, "val/")

    def on_test_epoch_start(self) -> None:
        self.test_metrics = self._fresh_outside_inference(self.test_metrics, "test/")

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
