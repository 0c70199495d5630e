"""Attention-state detection from EEG: indices, per-user baseline, state model, HMM, quality gate.

=========================================  ==================================================
``AttentionDetector(spec, config, model)``  one :class:`StateOutput` per window (``step``)
``detect_signal(signal, spec, ...)``        the detector over a whole recording (offline)
``DetectorConfig``                          windows, calibration, smoothing, state set
``attention_guard()``, ``StateModel``       AttentionGuard's four states on the plane, or yours
``EngagementModel(path)``                   fine-tuned decoder (fp32, bundle, ONNX) as an axis
``window_indices``                          engagement, θ/β, frontal θ, α/θ, slowing, posterior α
``assess``, ``QualityConfig``               the signal-quality gate
``CausalChain``, ``zero_phase``             live and offline preprocessing
``read_session``                            files (MNE) or store recordings as one session
=========================================  ==================================================

How it works and what is validated: ``docs/attention.md``.
"""

from brainfm.attention.detector import AttentionDetector, DetectorConfig, StateOutput, detect_signal
from brainfm.attention.engagement import EngagementModel
from brainfm.attention.indices import INDEX_NAMES, window_indices
from brainfm.attention.preprocess import CausalChain, resample_window, zero_phase
from brainfm.attention.quality import Quality, QualityConfig, assess
from brainfm.attention.recording import Session, read_session
from brainfm.attention.smoothing import HmmSmoother
from brainfm.attention.states import CALIBRATING, SIGNAL_BAD, Region, StateModel, attention_guard
from brainfm.attention.windows import Windower

__all__ = [
    "CALIBRATING", "INDEX_NAMES", "SIGNAL_BAD", "AttentionDetector", "CausalChain", "DetectorConfig",
    "EngagementModel", "HmmSmoother", "Quality", "QualityConfig", "Region", "Session", "StateModel",
    "StateOutput", "Windower", "assess", "attention_guard", "detect_signal", "read_session", "resample_window",
    "window_indices", "zero_phase",
]
