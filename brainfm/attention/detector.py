"""The attention-state detector: quality gate, indices, decoder, per-user baseline, states, HMM.

One :meth:`AttentionDetector.step` per window, the same offline (:func:`detect_signal`) and
live (:mod:`brainfm.live`)::

    raw window (µV, source rate) ──▶ quality gate ──bad──▶ "signal-bad" (HMM held)
    filtered window ──▶ resample to 200 Hz ──▶ indices (brainfm.targets) ─┐
                                           └─▶ decoder log-odds (optional) ┴▶ features
    features ──▶ per-user baseline (first calibration_s: "calibrating") ──▶ z
    z ──▶ engagement × arousal plane ──▶ state model probabilities ──▶ HMM (dwell, hysteresis)

Every :class:`StateOutput` carries the reported state, the smoothed and the instantaneous
probabilities, the indices and axes that drove it, and the quality verdict.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch

from brainfm.attention.calibration import Baseline
from brainfm.attention.engagement import MODEL_SFREQ, EngagementModel
from brainfm.attention.indices import window_indices
from brainfm.attention.preprocess import CausalChain, resample_window, zero_phase
from brainfm.attention.quality import Quality, QualityConfig, assess
from brainfm.attention.smoothing import HmmSmoother
from brainfm.attention.states import CALIBRATING, SIGNAL_BAD, StateModel, attention_guard
from brainfm.attention.windows import Windower
from brainfm.data.normalize import RunningMoments
from brainfm.models.decoder import window_for
from brainfm.signal import SensorSpec


@dataclass
class DetectorConfig:
    """Windows, calibration, smoothing and state set of a detector.

    ``min_dwell_s`` is rounded to whole hops; ``decoder_weight`` is the decoder's share of the
    engagement axis when a decoder is given (the engagement index has the rest).

    ``stats_half_life_s``: for a decoder trained on subject-normalised windows, the user's input
    statistics come from the first half of the calibration span. With ``None`` (the default) they
    stay fixed after it (the ``calibration`` source); with a half-life in s they keep following the
    signal, every hop that passes the quality gate, with exponential forgetting (the ``running``
    source, issue #12; the half-life counts good-signal time), so slow drift
    (electrodes drying, a headset moved) is tracked. The cost: statistics that follow the signal
    also follow a long stretch of one state, and the contrast the decoder reads fades over about a
    half-life of it. ``docs/attention.md`` has the measurement.
    """

    window_s: float = 4.0
    hop_s: float = 0.5
    calibration_s: float = 60.0
    line_freq: float | None = 50.0
    stay: float = 0.9
    min_dwell_s: float = 2.0
    hysteresis: float = 0.1
    decoder_weight: float = 0.5
    states: StateModel = field(default_factory=attention_guard)
    quality: QualityConfig = field(default_factory=QualityConfig)
    stats_half_life_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.hop_s <= self.window_s:
            raise ValueError(f"hop ({self.hop_s} s) must be in (0, window {self.window_s} s]")
        if self.calibration_s < self.hop_s:
            raise ValueError(f"calibration_s must be at least one hop ({self.hop_s} s)")
        if not 0 <= self.decoder_weight <= 1:
            raise ValueError("decoder_weight must be in [0, 1]")
        if self.stats_half_life_s is not None and not (math.isfinite(self.stats_half_life_s)
                                                       and self.stats_half_life_s >= self.hop_s):
            raise ValueError(f"stats_half_life_s must be at least one hop ({self.hop_s} s) or None, "
                             f"got {self.stats_half_life_s!r}")


@dataclass
class StateOutput:
    """One window's decision. ``t`` is the time of the window's last sample (s: from the start
    offline, the LSL clock live); ``sample`` counts samples from the start of the input."""

    t: float
    sample: int
    state: str
    probabilities: dict[str, float]
    instantaneous: dict[str, float]
    indices: dict[str, float]
    engagement: float | None
    arousal: float | None
    decoder: float | None
    quality: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


class AttentionDetector:
    """Stateful detector over the windows of one person's session.

    Parameters
    ----------
    spec : SensorSpec
        Channels (with positions) at the *source* rate, in the order windows arrive.
    config : DetectorConfig
    model : EngagementModel, optional
        The fine-tuned decoder of the engagement axis.
    """

    def __init__(self, spec: SensorSpec, config: DetectorConfig | None = None, model: EngagementModel | None = None):
        self.spec, self.config, self.model = spec, config or DetectorConfig(), model
        if model is not None:  # warns when the decoder was trained on windows of another length
            window_for(model.window_s, self.config.window_s, self.config.window_s)
        self.model_spec = SensorSpec(spec.ch_names, spec.ch_types, spec.loc, MODEL_SFREQ)
        self.window_n = int(round(self.config.window_s * spec.sfreq))
        self.hop_n = int(round(self.config.hop_s * spec.sfreq))
        self.geometry = torch.from_numpy(self.model_spec.geometry())[None]  # (1, C, 6)
        hops = max(1, int(round(self.config.min_dwell_s / self.config.hop_s)))
        self.smoother = HmmSmoother(len(self.config.states.names), self.config.stay, hops, self.config.hysteresis)
        needs_stats = model is not None and model.needs_calibration
        if self.config.stats_half_life_s is not None and (model is None or model.normalize_method is None):
            warnings.warn("stats_half_life_s has no effect: the detector has no decoder trained on "
                          "subject-normalised windows", stacklevel=2)
        # with a normalising (or token-statistics) decoder, its statistics come from the first half
        # of the calibration span and its log-odds baseline from the second half
        self.signal_s = self.config.calibration_s / 2 if needs_stats else 0.0
        self.signal_moments = RunningMoments(spec.n_channels) if needs_stats else None
        self.calibration_windows: list[np.ndarray] = []  # the first half's windows, for token statistics
        self.signal_covered = 0.0
        self.index_baseline = Baseline(2, self.config.calibration_s)
        self.decoder_baseline = Baseline(1, self.config.calibration_s - self.signal_s) if model else None

    @property
    def calibrated(self) -> bool:
        return self.index_baseline.ready and (self.decoder_baseline is None or self.decoder_baseline.ready)

    def calibrate_on(self, raw_uv: np.ndarray, chain: str = "zero-phase") -> "AttentionDetector":
        """Take the per-user baseline from an earlier recording of the same person and montage
        (``(C, N)`` µV at the source rate, e.g. a 60-s rest recorded before a live session),
        instead of the first ``calibration_s`` of the session itself."""
        for out in detect_signal(raw_uv, self.spec, chain=chain, detector=self):
            if self.calibrated:
                break
        if not self.calibrated:
            raise ValueError(f"the calibration recording holds less than {self.config.calibration_s:g} s of good signal")
        self.smoother.reset()
        return self

    def _output(self, t: float, sample: int, state: str, quality: Quality, indices=None, e=None, a=None,
                decoder=None, probs=None, inst=None) -> StateOutput:
        names = self.config.states.names
        as_dict = (lambda p: {n: float(v) for n, v in zip(names, p)}) if probs is not None else (lambda p: {})
        return StateOutput(float(t), int(sample), state, as_dict(probs), as_dict(inst),
                           {k: _finite(v) for k, v in (indices or {}).items()}, _finite(e), _finite(a),
                           _finite(decoder), quality.to_dict())

    def step(self, raw: np.ndarray, filtered: np.ndarray, t: float, sample: int = 0) -> StateOutput:
        """Decide one window: ``raw`` and ``filtered`` ``(C, window_n)`` in µV at the source rate."""
        cfg = self.config
        quality = assess(raw, self.spec.sfreq, self.spec.ch_names, cfg.quality)
        if not quality.ok:
            return self._output(t, sample, SIGNAL_BAD, quality)
        x = resample_window(filtered, self.spec.sfreq, MODEL_SFREQ)  # (C, 200 * window_s)
        usable = torch.from_numpy(quality.usable)[None]  # (1, C)
        indices = {k: float(v[0]) for k, v in
                   window_indices(torch.from_numpy(x)[None], MODEL_SFREQ, self.geometry, usable).items()}
        features = np.array([math.log(indices["engagement"]), -math.log(indices["delta_beta"])])
        if not np.isfinite(features).all():
            return self._output(t, sample, SIGNAL_BAD, Quality(False, ("nan",)), indices)
        decoder = None
        if self.signal_moments is not None and self.signal_covered < self.signal_s:
            new = x[:, -int(round(cfg.hop_s * MODEL_SFREQ)):] if self.signal_covered else x
            self.signal_moments.update(new)
            if self.model.live_token_stats:
                self.calibration_windows.append(x.astype(np.float32))
            self.signal_covered += cfg.hop_s if self.signal_covered else cfg.window_s
            if self.signal_covered >= self.signal_s:
                running = cfg.stats_half_life_s is not None
                self.model.calibrate(self.signal_moments, self.model_spec, self.calibration_windows,
                                     "running" if running else "calibration", None if running else self.signal_s)
                self.calibration_windows = []
                if running:  # from here on each hop's new samples count, the old ones fade by half per half-life
                    self.signal_moments.decay = 0.5 ** (cfg.hop_s / cfg.stats_half_life_s)
        elif self.model is not None:
            if self.signal_moments is not None and cfg.stats_half_life_s is not None:
                self.signal_moments.update(x[:, -int(round(cfg.hop_s * MODEL_SFREQ)):])  # this hop's samples
                self.model.set_input_statistics(self.signal_moments, self.model_spec, "running")
            decoder = self.model.log_odds(x.astype(np.float32), self.model_spec)
        if not self.calibrated:
            self.index_baseline.update(features, cfg.hop_s)
            if decoder is not None:
                self.decoder_baseline.update(np.array([decoder]), cfg.hop_s)
            return self._output(t, sample, CALIBRATING, quality, indices, decoder=decoder)
        z = self.index_baseline.z(features)
        e, a = float(z[0]), float(z[1])
        if decoder is not None:
            e = (1 - cfg.decoder_weight) * e + cfg.decoder_weight * float(self.decoder_baseline.z([decoder])[0])
        inst = cfg.states.probabilities(e, a)
        post, idx = self.smoother.step(inst)
        return self._output(t, sample, cfg.states.names[idx], quality, indices, e, a, decoder, post, inst)


def detect_signal(raw_uv: np.ndarray, spec: SensorSpec, config: DetectorConfig | None = None,
                  model: EngagementModel | None = None, chain: str = "zero-phase", t0: float = 0.0,
                  filtered_uv: np.ndarray | None = None, progress=None,
                  detector: AttentionDetector | None = None) -> Iterator[StateOutput]:
    """The detector over a whole recording ``(C, N)`` in µV: the offline timeline.

    ``chain``: ``zero-phase`` (offline default), ``causal`` (exactly what the live detector
    computes on the same samples) or ``none`` (the signal is already preprocessed, e.g. a
    store recording; ``filtered_uv`` may also be given directly). ``detector``: continue with an
    existing detector (its baseline, e.g. from :meth:`AttentionDetector.calibrate_on`).
    """
    detector = detector or AttentionDetector(spec, config, model)
    if filtered_uv is None:
        if chain == "zero-phase":
            filtered_uv = zero_phase(raw_uv, spec.sfreq, detector.config.line_freq)
        elif chain == "causal":
            filtered_uv = CausalChain(spec.sfreq, spec.n_channels, detector.config.line_freq).process(raw_uv)
        elif chain == "none":
            filtered_uv = raw_uv
        else:
            raise ValueError(f"chain must be zero-phase, causal or none, got {chain!r}")
    windower = Windower(spec.n_channels, detector.window_n, detector.hop_n)
    for window, end in windower.feed(np.asarray(raw_uv, dtype=np.float64), np.asarray(filtered_uv)):
        yield detector.step(window[0], window[1], t0 + end / spec.sfreq, end)
        if progress is not None:
            progress(detector.hop_n)
