"""Shared set-up and plots of the demo notebooks (not part of the installed package).

Importing this module quiets the log and warning noise that would otherwise bury the
notebooks' own output. Each filter below names the warning and why it is harmless here:

* MNE's ``Montage name 'standard_1020' is deprecated`` (MNE >= 1.9 renamed the built-in
  montage; the shards store their own positions, the name only labels a plot);
* Lightning's ``does not have many workers`` (the demos read in-process on purpose, the
  windows fit in memory and worker start-up costs more than it saves on 2 cores);
* Lightning's ``isinstance(treespec, LeafSpec)`` (a torch/Lightning version deprecation
  inside Lightning's own code);
* Lightning's ``IterableDataset has __len__`` (the pretraining sampler's length is exact);
* tqdm's ``IProgress not found`` (``tqdm.auto`` looks for Jupyter widgets, which the demos do
  not install; progress bars fall back to text).

brainfm's own info lines (class weights, reset-tuning, the exported checkpoint) are kept and
printed to standard output, so they read as the notebook's output rather than as red stderr
blocks on the web.

The helpers: :func:`learning_curves` (loss per epoch from a ``CSVLogger``),
:func:`classical_scores` (the log band power pipeline's test metrics),
:func:`gradient_x_input` and :func:`topomaps` (signed channel attributions on one
colour scale, optionally each normalised by its largest magnitude).

The notebooks import it as ``_demo``: Jupyter started in ``notebooks/`` finds it, and
``notebooks/regenerate.py`` and ``tests/test_notebooks.py`` put ``notebooks/`` on the path.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import brainfm
import lightning.pytorch  # noqa: F401 - sets its loggers to INFO on import, so it must come before quiet()
import matplotlib.pyplot as plt
import mne
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

FILTERS = (
    "Montage name 'standard_1020' is deprecated",
    ".*does not have many workers.*",
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*IterableDataset.*has `__len__` defined.*",
    "IProgress not found",
)


#: Where brainfm's modules live: info lines logged from there are brainfm's own.
BRAINFM_DIR = str(Path(brainfm.__file__).resolve().parent) + os.sep


class InfoToStdout(logging.StreamHandler):
    """brainfm's own info lines (class weights, reset-tuning, the exported checkpoint) on standard
    output, where they read as the notebook's output. Lightning's own info lines ("GPU available",
    tips) are dropped: brainfm logs through Lightning's ``rank_zero_info``, so the two share a logger
    and differ only in the file that logged. Warnings and errors stay on Lightning's handler (stderr)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.addFilter(lambda record: record.levelno < logging.WARNING and record.pathname.startswith(BRAINFM_DIR))


def quiet() -> None:
    """Silence the known-harmless warnings (module docstring) and Lightning's own info lines,
    which Lightning turns on when it is first imported (hence the import above)."""
    for message in FILTERS:
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger("lightning.pytorch")
    for handler in logger.handlers:
        if not isinstance(handler, InfoToStdout) and handler.level < logging.WARNING:
            handler.setLevel(logging.WARNING)  # Lightning's handler keeps warnings and errors only
    if not any(isinstance(h, InfoToStdout) for h in logger.handlers):
        logger.addHandler(InfoToStdout())
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)  # "Seed set to"
    mne.set_log_level("WARNING")


quiet()


def window_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C, T)`` windows (as the model sees them, normalised if the dataset is) and labels."""
    return np.stack([dataset[k]["x"].numpy() for k in range(len(dataset))]), np.asarray(dataset.labels)


def classical_scores(clf, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Balanced accuracy, Cohen's kappa and AUROC of a fitted scikit-learn classifier."""
    pred, prob = clf.predict(x), clf.predict_proba(x)[:, 1]
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "kappa": float(cohen_kappa_score(y, pred)), "auroc": float(roc_auc_score(y, prob))}


def epoch_losses(metrics_csv: str, start: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per-epoch mean training loss and validation loss/balanced accuracy from a ``CSVLogger`` file,
    indexed by epochs completed; ``start`` (``trainer.validate`` before fitting) is row 0."""
    log = pd.read_csv(metrics_csv)
    train = log.dropna(subset=["train/loss"]).groupby("epoch")["train/loss"].mean()
    cols = [c for c in ("val/loss", "val/balanced_accuracy") if c in log]
    val = log.dropna(subset=cols[:1]).groupby("epoch")[cols].last()
    curves = pd.concat([train, val], axis=1)
    curves.index = curves.index + 1
    if start is not None:
        curves.loc[0] = {c: start.get(c, np.nan) for c in curves.columns}
    curves.index.name = "epochs trained"
    return curves.sort_index()


def learning_curves(curves: pd.DataFrame, title: str = ""):
    """Training and validation loss per epoch (left) and validation balanced accuracy (right).

    The training loss is the mean over each epoch's steps (plotted at the epoch's end); a
    validation row 0 is the model before training.
    """
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.2))
    ax.plot(curves.index, curves["train/loss"], marker="o", label="training (mean over the epoch)")
    if "val/loss" in curves:
        ax.plot(curves.index, curves["val/loss"], marker="o", label="validation")
    ax.set(xlabel="epochs trained", ylabel="cross-entropy loss", title=title)
    ax.legend(fontsize=8)
    if "val/balanced_accuracy" in curves:
        ax2.plot(curves.index, curves["val/balanced_accuracy"], marker="o", color="C1")
        ax2.axhline(0.5, color="grey", ls=":", label="chance")
        ax2.set(xlabel="epochs trained", ylabel="validation balanced accuracy", ylim=(0.3, 1.02))
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_x_input(decoder: torch.nn.Module, batches: Iterable[Mapping], subject: bool = False) -> np.ndarray:
    """Signed gradient × input of the (class 1 − class 0) logit, summed over time: ``(N, C)``.

    Positive values push a window towards class 1. ``subject`` passes each batch's subjects
    to the decoder (subject-specific layers).
    """
    decoder = decoder.eval()
    out = []
    for batch in batches:
        x = batch["x"].clone().requires_grad_(True)
        logits = decoder(x, batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"],
                         batch.get("subject") if subject else None)
        (logits[:, 1] - logits[:, 0]).sum().backward()
        out.append((x.grad * x).sum(-1).detach())  # (B, C)
    return torch.cat(out).numpy()


def topomaps(maps: Mapping[str, np.ndarray], info: mne.Info, title: str, unit: str = "a.u.",
             names: bool = True, normalise: bool = False):
    """One topomap per entry, all on one symmetric colour scale (``RdBu_r``: red positive, blue negative).

    ``normalise`` divides each map by its own largest magnitude, so a map much smaller than the others
    (a difference of two similar maps) keeps its contrast; the colour bar then reads −1…1. Electrode
    names, when drawn, sit on one-pixel sensor marks, so the dots do not cover them."""
    if normalise:
        maps = {label: values / max(float(np.abs(values).max()), np.finfo(float).tiny) for label, values in maps.items()}
        unit = f"{unit} ÷ its largest |value|"
    vmax = max(float(np.abs(v).max()) for v in maps.values())
    fig, axes = plt.subplots(1, len(maps), figsize=(3.3 * len(maps) + 0.8, 3.4), squeeze=False)
    for ax, (label, values) in zip(axes[0], maps.items()):
        im, _ = mne.viz.plot_topomap(values, info, axes=ax, show=False, cmap="RdBu_r", vlim=(-vmax, vmax),
                                     names=info.ch_names if names else None, sensors="k," if names else True)
        ax.set_title(label, fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=unit)
    fig.suptitle(title, fontsize=11)
    return fig
