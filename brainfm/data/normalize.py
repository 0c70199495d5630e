"""Subject-adaptive normalisation from unlabelled signal: channel z-scoring and Euclidean alignment.

EEG amplitude and spatial covariance differ more between people than between mental states
of one person, so a decoder trained on some subjects transfers badly to the next. Two
label-free corrections, each fitted on a subject's own *unlabelled* signal:

``zscore``
    Per-subject channel standardisation: ``z = (x - μ_c) / σ_c`` with each channel's mean and
    standard deviation over the subject's signal.
``align``
    Euclidean alignment (He & Wu, "Transfer learning for brain-computer interfaces: a
    Euclidean space data alignment approach", IEEE TBME 67(2), 2020; preprint 2019) after
    z-scoring: ``R`` is the subject's mean spatial covariance of the z-scored windows and
    ``x̃ = R^{-1/2} z``, so that the subject's mean covariance becomes the identity. Because
    the windows are band-passed (0.3 Hz high-pass in the ``eeg-fm`` preset) and z-scored
    with the subject's mean, the mean of the per-window covariances ``z_i z_iᵀ / T`` equals
    the covariance over all of the subject's samples, which is what is accumulated here.

Both are the input-space siblings of AdaBN (Li et al., "Adaptive batch normalization for
practical domain adaptation", Pattern Recognition 80, 2018), which re-estimates normalisation
statistics on the target domain without labels.

Sources of statistics (:data:`SOURCES`, recorded by name with the statistics):

``session``
    all of a subject's unlabelled signal (transductive: the test session itself);
``calibration``
    its first ``seconds`` (the spans of :func:`brainfm.data.splits.calibration_spans`);
``running``
    an online estimate for live use, :class:`RunningMoments` updated window by window
    (optionally with exponential forgetting).

Scale for a pretrained encoder: z-scored channels have unit variance, whereas brainfm's
tokenizer expects physical units (it divides EEG by ``input_scale`` = 100 µV). The
normalised signal is therefore multiplied by a fixed population scale per channel type
(:data:`POPULATION_SCALE`: 10 µV for EEG, the median channel standard deviation of the 36
EEGMAT subjects after the ``eeg-fm`` preset, 8-12 µV from the 10th to the 90th percentile), so what the encoder sees keeps the amplitude range it
was pretrained on. The scale is saved with the statistics.

Statistics never see labels: they come from every sample of a subject's recordings (or of
their calibration spans), one subject at a time. EEGMAT has one recording per class and
subject, so per-*recording* statistics would leak the label; here they are per subject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.linalg import eigh

from brainfm.data.splits import calibration_spans
from brainfm.signal import SensorSpec

#: Normalisation methods (``None`` = off).
METHODS = ("zscore", "align")
#: Where statistics come from.
SOURCES = ("session", "calibration", "running")
#: Amplitude (store units) that a unit-variance normalised channel is scaled to, per channel
#: type: EEG/iEEG in µV, magnetometers in fT, gradiometers in fT/cm (typical raw standard
#: deviations: see :data:`brainfm.models.config.DEFAULT_INPUT_SCALE`), BOLD unitless.
POPULATION_SCALE: dict[str, float] = {"eeg": 10.0, "seeg": 10.0, "ecog": 10.0, "dbs": 10.0,
                                      "mag": 380.0, "grad": 60.0, "bold": 1.0}
#: Relative eigenvalue floor of ``R`` before the inverse square root (rank-deficient
#: montages, e.g. average reference, have one near-zero eigenvalue).
EIG_FLOOR = 1e-6


def check_method(method: str | None, source: str = "session") -> str | None:
    """Validate ``method`` (``None``/``"none"`` = off) and ``source``; return the method."""
    method = None if method in (None, "none") else method
    if method is not None and method not in METHODS:
        raise ValueError(f"normalize must be one of {('none',) + METHODS}, got {method!r}")
    if source not in SOURCES:
        raise ValueError(f"stats_source must be one of {SOURCES}, got {source!r}")
    return method


def normalization_entry(method: str | None, source: str = "session", seconds: float = 60.0) -> dict | None:
    """How windows are normalised, as a target set's manifest entry records it (None: not at all)."""
    method = check_method(method, source)
    if method is None:
        return None
    return {"method": method, "source": source, "seconds": float(seconds) if source == "calibration" else None}


@dataclass
class RunningMoments:
    """First and second moments of a multichannel signal, accumulated sample by sample.

    Holds the sample count, the channel sums ``Σx`` (C,) and the cross-products ``Σxxᵀ``
    (C, C) in float64, which is all that z-scoring and Euclidean alignment need. Feed it a
    whole session (``session`` source), a calibration span (``calibration``), or windows as
    they arrive (``running``); with ``decay`` < 1, the old moments are down-weighted by
    ``decay`` at each update (exponential forgetting for drifting live signals).
    """

    n_channels: int
    decay: float | None = None
    count: float = 0.0
    total: np.ndarray = field(default=None)  # (C,)
    cross: np.ndarray = field(default=None)  # (C, C)

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = np.zeros(self.n_channels)
        if self.cross is None:
            self.cross = np.zeros((self.n_channels, self.n_channels))
        if self.decay is not None and not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")

    def update(self, x: np.ndarray | torch.Tensor) -> "RunningMoments":
        """Add a window ``(C, T)`` or a batch ``(B, C, T)`` of unlabelled signal."""
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        if x.ndim == 3:
            x = x.transpose(1, 0, 2).reshape(x.shape[1], -1)  # (B, C, T) -> (C, B*T)
        if x.ndim != 2 or x.shape[0] != self.n_channels:
            raise ValueError(f"expected ({self.n_channels}, T) or (B, {self.n_channels}, T), got {x.shape}")
        if self.decay is not None and self.count:
            self.count, self.total, self.cross = self.count * self.decay, self.total * self.decay, self.cross * self.decay
        self.count += x.shape[1]
        self.total += x.sum(axis=1)
        self.cross += x @ x.T
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1.0)

    @property
    def covariance(self) -> np.ndarray:
        """Covariance about the mean, ``Σxxᵀ/n − μμᵀ`` (C, C)."""
        mu = self.mean
        return self.cross / max(self.count, 1.0) - np.outer(mu, mu)

    def stats(self, subject: str, source: str, seconds: float | None = None, channels: Sequence[str] = (),
              scale: np.ndarray | None = None) -> "SubjectStats":
        """The :class:`SubjectStats` of what was accumulated."""
        if self.count < 2:
            raise ValueError(f"no signal accumulated for subject {subject!r}")
        cov = self.covariance
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        std = np.where(std > 0, std, 1.0)  # flat channels stay flat instead of dividing by zero
        corr = cov / np.outer(std, std)  # covariance of the z-scored signal: R of He & Wu
        scale = np.ones(self.n_channels) if scale is None else np.asarray(scale, dtype=np.float64)
        return SubjectStats(subject, self.mean, std, inverse_sqrt(corr), scale, source, seconds, float(self.count),
                            tuple(channels))


def inverse_sqrt(r: np.ndarray, floor: float = EIG_FLOOR) -> np.ndarray:
    """``R^{-1/2}`` of a symmetric positive semi-definite matrix (``scipy.linalg.eigh``),
    eigenvalues floored at ``floor · max eigenvalue``."""
    w, v = eigh(r)
    w = np.maximum(w, floor * max(float(w.max()), 1e-300))
    return (v / np.sqrt(w)) @ v.T  # V diag(w^{-1/2}) Vᵀ


@dataclass(frozen=True)
class SubjectStats:
    """One subject's normalisation statistics (float64, in its picked channel order).

    Parameters
    ----------
    subject : str
    mean, std : ndarray (C,)
        Channel mean and standard deviation (store units).
    whitening : ndarray (C, C)
        ``R^{-1/2}``, ``R`` the covariance of the z-scored signal (Euclidean alignment).
    scale : ndarray (C,)
        Population scale each normalised channel is multiplied by (:data:`POPULATION_SCALE`).
    source : {'session', 'calibration', 'running'}
    seconds : float, optional
        Calibration length (``calibration`` source).
    n_samples : float
        Samples (per channel) the statistics were estimated from.
    channels : tuple of str
        Channel names, checked when the statistics are applied to a recording.
    """

    subject: str
    mean: np.ndarray
    std: np.ndarray
    whitening: np.ndarray
    scale: np.ndarray
    source: str
    seconds: float | None
    n_samples: float
    channels: tuple[str, ...] = ()

    def affine(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` with ``normalised = W x + b``: centring, z-scoring, alignment and the
        population scale folded into one map, so a window costs one (C, C) product.

        ``zscore``: ``W = diag(scale / std)``; ``align``: ``W = diag(scale) R^{-1/2} diag(1 / std)``;
        ``b = -W mean`` in both.
        """
        if method == "zscore":
            w = np.diag(self.scale / self.std)
        elif method == "align":
            w = self.scale[:, None] * self.whitening / self.std[None, :]
        else:
            raise ValueError(f"unknown normalisation method {method!r}")
        return w, -w @ self.mean

    def apply(self, x: np.ndarray, method: str) -> np.ndarray:
        """Normalise ``x`` (C, T) or (B, C, T) with ``method`` (``zscore`` or ``align``)."""
        w, b = self.affine(method)
        return np.einsum("ij,...jt->...it", w, x) + b[:, None]  # (..., C, T)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k)))
                for k in ("mean", "std", "whitening", "scale")}

    def metadata(self) -> dict:
        return {"source": self.source, "seconds": self.seconds, "n_samples": self.n_samples,
                "channels": list(self.channels)}


def population_scale(spec: SensorSpec) -> np.ndarray:
    """Per channel of ``spec``, the :data:`POPULATION_SCALE` of its type (C,)."""
    return np.asarray([POPULATION_SCALE.get(t, 1.0) for t in spec.ch_types], dtype=np.float64)


def subject_stats(signals: Iterable[np.ndarray | torch.Tensor], subject: str, spec: SensorSpec,
                  source: str = "session", seconds: float | None = None) -> SubjectStats:
    """Statistics of one subject from its unlabelled ``signals`` (each ``(C, T)`` or ``(B, C, T)``).

    The entry point for a new subject at deploy time: pass its session, its first seconds,
    or use :class:`RunningMoments` directly for a live stream.
    """
    acc = RunningMoments(spec.n_channels)
    for x in signals:
        acc.update(x)
    return acc.stats(subject, source, seconds, spec.ch_names, population_scale(spec))


class SubjectNormalizer:
    """Per-subject normalisation, applied to windows by subject name.

    Parameters
    ----------
    method : {'zscore', 'align'}
    stats : mapping of subject to SubjectStats

    Call it as ``normalizer(subject, x)`` on a window ``(C, T)`` (numpy or torch) or a batch
    ``(B, C, T)`` of one subject. A subject without statistics is an error, never a silent
    pass-through: add them first (:meth:`add`, :func:`subject_stats`).
    """

    def __init__(self, method: str, stats: Mapping[str, SubjectStats] | None = None):
        method = check_method(method)
        if method is None:
            raise ValueError("a SubjectNormalizer needs a method (zscore or align)")
        self.method = method
        self.stats: dict[str, SubjectStats] = dict(stats or {})
        #: Per subject, the float32 affine map of :meth:`SubjectStats.affine` (built on first use).
        self._maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, stats: SubjectStats) -> None:
        self.stats[stats.subject] = stats
        self._maps.pop(stats.subject, None)

    def _map(self, subject: str) -> tuple[np.ndarray, np.ndarray]:
        if subject not in self._maps:
            w, b = self.stats[subject].affine(self.method)
            self._maps[subject] = (w.astype(np.float32), b.astype(np.float32)[:, None])
        return self._maps[subject]

    def __contains__(self, subject: str) -> bool:
        return subject in self.stats

    def __call__(self, subject: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if subject not in self.stats:
            raise KeyError(f"no normalisation statistics for subject {subject!r}; compute them from its "
                           "unlabelled signal (brainfm.data.normalize.subject_stats) and add them")
        s = self.stats[subject]
        if x.shape[-2] != len(s.mean):
            raise ValueError(f"subject {subject!r} has statistics for {len(s.mean)} channels, got {x.shape[-2]}")
        w, b = self._map(subject)
        if isinstance(x, torch.Tensor):
            w_t, b_t = torch.from_numpy(w).to(x.device), torch.from_numpy(b).to(x.device)
            return w_t @ x.float() + b_t  # (C, C) @ (..., C, T)
        return w @ np.asarray(x, dtype=np.float32) + b

    def normalize_batch(self, batch: dict) -> dict:
        """A :func:`~brainfm.data.collate_windows` batch with each window normalised by its subject
        (padded channels stay zero)."""
        x = batch["x"].clone()
        for k, subject in enumerate(batch["subject"]):
            n = int(batch["channel_mask"][k].sum())
            x[k, :n] = self(subject, x[k, :n])
        return {**batch, "x": x}

    # -- description and serialisation (safetensors tensors + JSON, no pickle) -------------
    def describe(self) -> dict:
        """Method, sources and subjects: what :class:`~brainfm.data.DataSummary` and the
        decoder's metadata record."""
        sources = sorted({s.source for s in self.stats.values()})
        seconds = sorted({s.seconds for s in self.stats.values() if s.seconds is not None})
        return {"method": self.method, "source": sources[0] if len(sources) == 1 else sources,
                "seconds": seconds[0] if len(seconds) == 1 else (seconds or None),
                "subjects": sorted(self.stats), "reference": "He & Wu 2019 (EA); Li et al. 2018 (AdaBN)"}

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], str]:
        """Tensors ``{subject}.{mean,std,whitening,scale}`` and JSON metadata (method and,
        per subject, source, seconds, sample count and channel names)."""
        tensors = {f"{subject}.{k}": v for subject, s in sorted(self.stats.items()) for k, v in s.tensors().items()}
        meta = {"method": self.method, "subjects": {subject: s.metadata() for subject, s in sorted(self.stats.items())}}
        return tensors, json.dumps(meta)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], metadata: str | Mapping) -> "SubjectNormalizer":
        """Inverse of :meth:`to_tensors`."""
        meta = json.loads(metadata) if isinstance(metadata, str) else dict(metadata)
        stats = {}
        for subject, m in meta["subjects"].items():
            arr = {k: tensors[f"{subject}.{k}"].double().numpy() for k in ("mean", "std", "whitening", "scale")}
            stats[subject] = SubjectStats(subject, arr["mean"], arr["std"], arr["whitening"], arr["scale"],
                                          m["source"], m["seconds"], m["n_samples"], tuple(m["channels"]))
        return cls(meta["method"], stats)

    def added_to(self, prior: tuple[Mapping[str, torch.Tensor], str] | None) -> tuple[dict[str, torch.Tensor], str]:
        """``prior`` statistics (:meth:`to_tensors` form, e.g. a decoder's) with these subjects' added or
        replaced, in the same form."""
        merged = SubjectNormalizer.from_tensors(*prior) if prior is not None else SubjectNormalizer(self.method)
        for stats in self.stats.values():
            merged.add(stats)
        return merged.to_tensors()


def fit_normalizer(datasets: Iterable, method: str, source: str = "session",
                   seconds: float = 60.0) -> SubjectNormalizer:
    """Statistics for every subject of window ``datasets`` (:class:`~brainfm.data.FixedWindows`,
    :class:`~brainfm.data.EventWindows`), each from that subject's own recordings only.

    The signal is read whole (``session``) or over the first ``seconds`` of the subject
    (``calibration``: :func:`~brainfm.data.splits.calibration_spans`, the same fraction of
    each recording), without labels and without the windows' spans or strides, so the
    statistics do not depend on labels, on the split part, or on other subjects.
    """
    method = check_method(method, source)
    if source == "running":
        raise ValueError("stats_source='running' is for live use (RunningMoments); offline data has "
                         "'session' or 'calibration'")
    recordings: dict[str, dict[str, tuple]] = {}  # subject -> recording id -> (dataset, index)
    for ds in datasets:
        if ds is None:
            continue
        for i, (rid, subject) in enumerate(zip(ds.recordings, ds.subjects)):
            recordings.setdefault(subject, {}).setdefault(rid, (ds, i))
    normalizer = SubjectNormalizer(method)
    for subject, recs in sorted(recordings.items()):
        specs = list(dict.fromkeys(ds.specs[i] for ds, i in recs.values()))
        if len(specs) > 1:
            raise ValueError(f"subject {subject!r} has recordings with different montages; "
                             "per-subject statistics need one montage per subject")
        n = {rid: ds.store.entry(rid)["n_samples"] for rid, (ds, _) in recs.items()}
        spans = {rid: (0, n[rid]) for rid in recs}
        if source == "calibration":
            sfreq = next(iter(recs.values()))[0].sfreq
            calib, _ = calibration_spans({rid: n[rid] / sfreq for rid in recs}, seconds)
            spans = {rid: (0, max(2, int(round(hi * sfreq)))) for rid, (_, hi) in calib.items()}
        signals = (ds.signal(i, *spans[rid]) for rid, (ds, i) in sorted(recs.items()))
        normalizer.add(subject_stats(signals, subject, specs[0], source,
                                     seconds if source == "calibration" else None))
    return normalizer


__all__ = ["METHODS", "POPULATION_SCALE", "SOURCES", "RunningMoments", "SubjectNormalizer", "SubjectStats",
           "check_method", "fit_normalizer", "normalization_entry", "inverse_sqrt", "population_scale", "subject_stats"]
