"""The fine-tuned decoder as the detector's engagement axis, in fp32, as a quantized bundle or ONNX.

One interface over the three runtimes of :mod:`brainfm.deploy`:

* ``decoder.safetensors`` or a DecodeModule ``.ckpt`` (:func:`brainfm.models.load_decoder`), fp32;
* a bundle directory (``brainfm quantize``: W8A8 / W4A16, :func:`brainfm.deploy.load`);
* an ``.onnx`` file (``brainfm export``, fp32 or ``--int8``), on onnxruntime's CPU provider.

Its output for a window is the log-odds of the *engaged* class (by default the class named
``arithmetic``, ``task`` or ``engaged``, else the last one): ``logit_k - logsumexp(others)``.
A decoder trained on subject-normalised windows (``normalization`` in its file, bundle or ONNX
metadata) gets the same normalisation with the *current user's* statistics from the calibration span
(:class:`brainfm.data.normalize.RunningMoments`), the deploy-time path of issue #12; with the detector's
``stats_half_life_s`` those statistics keep following the signal (the running source). A decoder trained
with label-free token statistics and given no ``subject`` gets the current user's too: the calibration
span's windows, normalised, set a ``live-user`` FiLM (:mod:`brainfm.tasks.token_stats`), which every
later window uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from brainfm.data.normalize import RunningMoments, SubjectNormalizer, population_scale
from brainfm.deploy import load as load_bundle
from brainfm.deploy import onnx_session, run_onnx
from brainfm.deploy.checkpoint import deploy_for
from brainfm.deploy.normalization import ONNX_SUBJECT_KEY, onnx_properties, onnx_window_s, read_onnx
from brainfm.models import load_decoder
from brainfm.signal import SensorSpec
from brainfm.tasks.token_stats import match_subjects, token_moments

ENGAGED_NAMES = ("arithmetic", "task", "engaged", "workload", "active")
#: The subject id of the person in front of the detector (their normalisation and FiLM).
LIVE_USER = "live-user"
MODEL_SFREQ = 200.0


class EngagementModel:
    """Log-odds of engagement from a decoder file (see the module docstring).

    Parameters
    ----------
    path : str or Path
        Decoder, bundle directory or ONNX file.
    engaged_class : str or int, optional
        The class meaning "engaged" (name or index).
    threads : int
        Intra-op threads (torch or onnxruntime).
    subject : str, optional
        The decoder's subject layers to use (:func:`brainfm.deploy.checkpoint.deploy_for`); an
        ONNX graph has its subject fixed at export. A token-statistics decoder without one is set
        for the current user at :meth:`calibrate`.

    Attributes
    ----------
    window_s : float or None
        The window length in s the decoder was trained on, if its file records it (the detector's
        default window).
    """

    def __init__(self, path: str | Path, engaged_class: str | int | None = None, threads: int = 1,
                 subject: str | None = None):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such model: {path}")
        self.path, self.threads = path, threads
        self.live_token_stats = False  # set below: the current user's FiLM comes from calibrate()
        if path.suffix == ".onnx":
            self.kind, self.session, self.model = "onnx", onnx_session(path, threads), None
            props, where = onnx_properties(self.session)
            exported_for = props.get(ONNX_SUBJECT_KEY)
            if subject is not None and subject != exported_for:
                raise ValueError(f"{path} was exported for {exported_for or 'no subject (the shared model)'}, "
                                 f"not {subject}: a graph's subject is fixed by brainfm export --subject")
            classes = None
            self.window_s = onnx_window_s(props, where)
        else:
            self.kind = "bundle" if path.is_dir() else "fp32"
            model = load_bundle(path) if path.is_dir() else load_decoder(path)
            self.live_token_stats = subject is None and model.token_stats and model.deploy_subject is None
            self.model = model if self.live_token_stats else deploy_for(model, subject, path)
            classes = getattr(self.model, "classes", None)
            self.window_s = getattr(self.model, "window_s", None)
        # every deployed form carries the decoder's normalisation (brainfm.deploy.normalization)
        norm = read_onnx(self.session) if self.kind == "onnx" else getattr(self.model, "normalization", None)
        self.normalize_method: str | None = None if norm is None else json.loads(norm[1])["method"]
        self.sfreq = float(getattr(getattr(self.model, "config", None), "sfreq", MODEL_SFREQ))
        self.classes = list(classes) if classes else None
        self.engaged = self._engaged_index(engaged_class)
        self._normalizer: SubjectNormalizer | None = None

    def _engaged_index(self, engaged_class: str | int | None) -> int:
        if isinstance(engaged_class, int):
            return engaged_class
        if self.classes is None:
            return -1
        if engaged_class is not None:
            if engaged_class not in self.classes:
                raise ValueError(f"{self.path}: no class {engaged_class!r}; classes are {self.classes}")
            return self.classes.index(engaged_class)
        named = [i for i, c in enumerate(self.classes) if str(c).lower() in ENGAGED_NAMES]
        return named[0] if named else len(self.classes) - 1

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` must run before :meth:`log_odds` (input or token statistics)."""
        return self.normalize_method is not None or self.live_token_stats

    def set_input_statistics(self, moments: RunningMoments, spec: SensorSpec, source: str = "calibration",
                             seconds: float | None = None) -> None:
        """The current user's input normalisation from ``moments`` (a no-op for a decoder without one).
        ``source``: ``calibration`` (the first span of the session, then fixed) or ``running`` (the
        detector updates the moments and calls this again as the session goes on)."""
        if self.normalize_method is not None:
            stats = moments.stats(LIVE_USER, source, seconds, channels=spec.ch_names, scale=population_scale(spec))
            self._normalizer = SubjectNormalizer(self.normalize_method, {LIVE_USER: stats})

    def calibrate(self, moments: RunningMoments, spec: SensorSpec, windows: Sequence[np.ndarray] = (),
                  source: str = "calibration", seconds: float | None = None) -> None:
        """Per-user input normalisation from the calibration signal (:meth:`set_input_statistics`), and
        for a token-statistics decoder the user's FiLM from the calibration ``windows`` (``(C, T)`` µV at
        :attr:`sfreq`), normalised first; the FiLM stays fixed after this."""
        self.set_input_statistics(moments, spec, source, seconds)
        if not self.live_token_stats:
            return
        if not len(windows):
            raise ValueError(f"{self.path} was trained with token statistics: calibrate it with the user's windows")
        x = np.stack([self._normalizer(LIVE_USER, w) if self._normalizer is not None else w for w in windows])
        geometry, types = spec.tensors
        n = len(x)
        batch = {"x": torch.as_tensor(x, dtype=torch.float32), "sensor_geometry": geometry.expand(n, -1, -1),
                 "sensor_type": types.expand(n, -1), "channel_mask": torch.ones(n, spec.n_channels, dtype=torch.bool),
                 "subject": [LIVE_USER] * n}  # (N, C, T) and the window's sensors
        match_subjects(self.model, token_moments(self.model.encoder, [batch]), {LIVE_USER: spec.n_channels})
        self.model.deploy_subject = LIVE_USER

    @torch.inference_mode()
    def log_odds(self, x: np.ndarray, spec: SensorSpec) -> float:
        """Engagement log-odds of one window ``(C, T)`` in µV at :attr:`sfreq`."""
        if self.live_token_stats and self.model.deploy_subject is None:
            raise RuntimeError(f"{self.path} was trained with token statistics: calibrate() it on the user first")
        if self._normalizer is not None:
            x = self._normalizer(LIVE_USER, x)
        geometry, types = spec.tensors
        inputs = (torch.as_tensor(np.asarray(x, dtype=np.float32))[None], geometry[None], types[None],
                  torch.ones(1, spec.n_channels, dtype=torch.bool))
        if self.kind == "onnx":
            logits = run_onnx(self.session, *inputs)[0]
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                logits = self.model(*inputs)[0]
            finally:
                torch.set_num_threads(threads)
        logits = logits.double()
        k = self.engaged % len(logits)
        others = torch.cat([logits[:k], logits[k + 1:]])
        return float(logits[k] - torch.logsumexp(others, 0))
