"""The one base of brainfm's LightningModules, in the spirit of torchgeo's ``BaseTask``.

:class:`BrainTask` owns what every task shares, so pretraining, decoding and the baselines
differ only in their network and loss:

* **the data–model handshake**: in ``setup`` it reads the DataModule's
  :class:`~brainfm.data.DataSummary` once and checks it against the model
  (:meth:`check_data`: :meth:`brainfm.models.ModelConfig.for_signal` for every montage), so a
  sampling-rate or window mismatch fails before the first step with one clear error;
* **parameter groups**: AdamW with weight decay on weight matrices only (biases, norms and
  embeddings get none);
* **the schedule**: linear warm-up, then cosine decay to ``min_lr_factor · lr``
  (:func:`warmup_cosine`), stepped every optimiser step;
* **export at the end of fit**: ``export_file`` (e.g. ``encoder.safetensors``) next to the
  logs, only when a logger gives a log folder, not in ``fast_dev_run``, and only after at
  least one optimiser step: a fit that trained nothing fails instead of writing untrained
  weights (issue #17, item 9; the DataModules already refuse empty stores, windows longer
  than every recording and validation subjects absent from the store).

Subclasses list ``lr``, ``weight_decay``, ``warmup_steps`` and ``min_lr_factor`` among their
own constructor arguments (LightningCLI shows them there) and call ``save_hyperparameters``;
the base reads them from ``hparams``.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar, Iterable

import lightning.pytorch as pl
import torch

from brainfm.data.datamodule import BrainDataModule
from brainfm.data.summary import DataSummary
from brainfm.models.config import ModelConfig
from brainfm.signal import check_sfreq


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_factor: float = 0.0) -> float:
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then cosine to ``min_factor``
    (SGDR's cosine annealing without restarts, Loshchilov & Hutter, ICLR 2017)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BrainTask(pl.LightningModule):
    """Base LightningModule: handshake, parameter groups, schedule, export at fit end.

    Attributes
    ----------
    config : ModelConfig or None
        The model's architecture; subclasses with a brainfm model set it in ``__init__``.
    data_summary : DataSummary or None
        The summary of the DataModule, after ``setup`` (None when fitting on plain loaders).
    export_file : str or None
        File name written next to the logs at the end of fit (class attribute).
    """

    export_file: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.config: ModelConfig | None = None
        self.data_summary: DataSummary | None = None

    # -- the data–model handshake --------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, BrainDataModule):
            self.connect(datamodule.summary)

    def connect(self, summary: DataSummary) -> None:
        """Check ``summary`` against the model (:meth:`check_data`), then keep it."""
        if summary.n_windows == 0:
            raise ValueError(f"no training windows ({summary.window_s:g}-s windows from {len(summary.specs)} "
                             "recording(s)): nothing to train on")
        self.check_data(summary)
        self.data_summary = summary

    def check_data(self, summary: DataSummary) -> None:
        """Raise if the data cannot feed the model: every montage through
        :meth:`ModelConfig.for_signal` (sampling rate, window, positions, channel types)."""
        for spec in summary.montages:
            self.config.for_signal(spec, summary.window_s)

    def check_batch_sfreq(self, batch: dict[str, Any]) -> None:
        """The same sampling-rate check for a batch (fits on plain DataLoaders have no summary)."""
        sfreq = batch.get("sfreq")
        if sfreq is not None:
            sfreq = torch.as_tensor(sfreq).flatten()
            check_sfreq(float(sfreq[(sfreq - self.config.sfreq).abs().argmax()]), self.config.sfreq)

    # -- optimiser and schedule -----------------------------------------------------------
    def decay_groups(self, params: Iterable[torch.nn.Parameter], lr: float) -> list[dict[str, Any]]:
        """AdamW groups of the trainable ``params`` at ``lr``: weight decay on matrices only."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)}
        decay, no_decay = [], []
        for p in params:
            if p.requires_grad:
                (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay, "lr": lr},
                  {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
        return [g for g in groups if g["params"]]

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters as AdamW groups; override for per-part learning rates."""
        return self.decay_groups(self.parameters(), self.hparams.lr)

    def schedule_steps(self) -> int:
        """Steps of the cosine schedule: the whole fit (``trainer.estimated_stepping_batches``)."""
        return max(1, int(self.trainer.estimated_stepping_batches))

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.param_groups())
        hp = self.hparams
        total = self.schedule_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_factor)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- export ---------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        """Export the trained weights next to the logs as :attr:`export_file`."""
        if self.export_file is None:
            return
        # Only next to real logs: without a logger, Trainer.log_dir is the working directory.
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if log_dir is None or not self.trainer.is_global_zero or self.trainer.fast_dev_run:
            return
        if self.trainer.global_step == 0 and not self.trainer.interrupted:
            raise RuntimeError(f"fit ended without a single training step, so no {self.export_file} was written: "
                               "the training data gave no batch")
        self.export_safetensors(os.path.join(log_dir, self.export_file))

    def export_safetensors(self, path: str | os.PathLike) -> None:
        """Write the task's weights to ``path`` (subclasses with an ``export_file``)."""
        raise NotImplementedError
