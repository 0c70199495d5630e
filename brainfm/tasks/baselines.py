"""Baselines on brainfm's splits: braindecode networks and a classical band-power pipeline.

Every baseline reads the same :class:`~brainfm.data.datamodule.DecodingDataModule`
batches and reports the same metrics as brainfm (:class:`ClassifierModule`), so a
comparison differs only in the model.

* :class:`BaselineModule` trains a braindecode model (``EEGNet``, EEGNet-v4 of Lawhern et
  al. 2018, exported by braindecode 1.8 as ``EEGNet``; ``ShallowFBCSPNet``, Schirrmeister
  et al. 2017; ``CBraMod``, Wang et al. 2025, here from scratch) with brainfm's loss,
  optimiser and metrics.
* :func:`log_bandpower_features` + :func:`classical_pipeline`: log band power per channel
  (δ θ α β γ, Welch) into a standardised logistic regression (scikit-learn), the classical
  baseline EEG foundation-model benchmarks find hard to beat.

Subject-adaptive normalisation (:mod:`brainfm.data.normalize`) lives in the DataModule
(``normalize='zscore'`` or ``'align'``), so both baselines see the same normalised windows,
from the same per-subject statistics, as brainfm; :func:`subject_feature_zscore` is the
feature-space variant for the classical pipeline.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from brainfm.data.summary import DataSummary
from brainfm.signal import check_sfreq
from brainfm.tasks.classify import ClassifierModule

BRAINDECODE_MODELS = ("EEGNet", "ShallowFBCSPNet", "CBraMod")
#: Default bands (Hz) of the classical pipeline.
BANDS = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 45.0)}


def braindecode_model(name: str, n_chans: int, n_times: int, sfreq: float, n_classes: int, **kwargs: Any):
    """Build braindecode model ``name`` for ``(n_chans, n_times)`` windows."""
    if name not in BRAINDECODE_MODELS:
        raise ValueError(f"unknown baseline {name!r}; choose from {BRAINDECODE_MODELS}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Montage name 'standard_1020' is deprecated")
        import braindecode.models as bd  # noqa: PLC0415 - heavy import, only for baselines

    if name == "EEGNet":
        # Lawhern et al.'s dense layer has a max-norm (0.25) constraint; braindecode 1.8
        # deprecates building it without one (the default, which warns).
        kwargs.setdefault("final_layer_with_constraint", True)
    return getattr(bd, name)(n_chans=n_chans, n_outputs=n_classes, n_times=n_times, sfreq=sfreq, **kwargs)


class BaselineModule(ClassifierModule):
    """A braindecode network trained with brainfm's loss, schedule and metrics.

    Parameters
    ----------
    name : {'EEGNet', 'ShallowFBCSPNet', 'CBraMod'}
    n_chans, n_times : int
        Window shape (braindecode models have a fixed montage and length).
    sfreq : float
    input_scale : float
        Inputs (µV) are multiplied by it: 0.01 puts EEG at O(1), as CBraMod's own data
        pipeline does (divide by 100 µV).
    model_kwargs : dict, optional
        Passed to the braindecode constructor.
    """

    def __init__(
        self,
        name: str = "EEGNet",
        n_chans: int = 19,
        n_times: int = 1000,
        sfreq: float = 200.0,
        n_classes: int = 2,
        input_scale: float = 0.01,
        model_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        min_lr_factor: float = 0.01,
        class_weights: str | list[float] | None = "balanced",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(n_classes, class_weights)
        self.save_hyperparameters()
        self.net = braindecode_model(name, n_chans, n_times, sfreq, n_classes, **(model_kwargs or {}))

    def check_data(self, summary: DataSummary) -> None:
        """The handshake for a braindecode network: the sampling rate it was built for."""
        check_sfreq(summary.sfreq, self.hparams.sfreq)

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["x"]
        if x.shape[1:] != (self.hparams.n_chans, self.hparams.n_times):
            raise ValueError(f"{self.hparams.name} was built for ({self.hparams.n_chans}, {self.hparams.n_times}) "
                             f"windows, got {tuple(x.shape[1:])}")
        return self.net(x * self.hparams.input_scale)


def log_bandpower_features(x: np.ndarray, sfreq: float, bands: dict[str, tuple[float, float]] = BANDS) -> np.ndarray:
    """``(N, C, T)`` windows -> ``(N, C·n_bands)`` log band powers (MNE Welch, 2-s segments)."""
    from mne.time_frequency import psd_array_welch  # noqa: PLC0415

    n_fft = min(x.shape[-1], int(2 * sfreq))
    psd, freqs = psd_array_welch(x, sfreq, fmin=min(b[0] for b in bands.values()),
                                 fmax=max(b[1] for b in bands.values()), n_fft=n_fft, verbose=False)
    feats = [psd[..., (freqs >= lo) & (freqs < hi)].mean(-1) for lo, hi in bands.values()]  # each (N, C)
    return np.log(np.stack(feats, axis=-1) + 1e-12).reshape(len(x), -1)  # (N, C*n_bands)


def subject_feature_zscore(features: np.ndarray, subjects: Sequence[str]) -> np.ndarray:
    """``(N, F)`` features, each subject's rows z-scored with that subject's own rows (unlabelled).

    The feature-space form of per-subject normalisation; the signal-space forms (channel
    z-score, Euclidean alignment) are ``DecodingDataModule(normalize=...)``, which every
    baseline reading its windows shares.
    """
    subjects = np.asarray(subjects)
    if len(subjects) != len(features):
        raise ValueError(f"{len(subjects)} subjects for {len(features)} feature rows")
    out = np.empty_like(features, dtype=np.float64)
    for s in np.unique(subjects):
        rows = subjects == s
        f = features[rows]
        out[rows] = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1.0)
    return out


def classical_pipeline(c: float = 1.0, seed: int = 0):
    """StandardScaler + class-balanced logistic regression (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000,
                                                              random_state=seed))
