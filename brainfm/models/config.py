"""Typed model configuration with named presets.

A :class:`ModelConfig` is the whole architecture of a :class:`~brainfm.models.BrainEncoder`:
it validates itself on construction, serialises to plain JSON (it travels as safetensors
metadata, see :mod:`brainfm.models.serialization`) and is looked up by name::

    cfg = ModelConfig.from_name("tiny", dropout=0.0)
    cfg = cfg.for_signal(spec, window_s=4.0)      # checks sfreq, window, positions
    cfg = resolve_config("tiny", {"dropout": 0.1})  # a name, a to_dict() dict or a config

Presets
-------
``tiny``
    2 layers, d=32, 4 heads: for tests (a forward on 19 ch x 4 s takes milliseconds).
``small``
    6 layers, d=128, 8 heads: for quick real-data experiments on CPU.
``base``
    CBraMod scale (Wang et al., ICLR 2025): 12 layers, d=200, 8 heads, feed-forward 800,
    1-s patches at 200 Hz.

All presets have ``dropout=0`` and ``attn_dropout=0``: masked-patch pretraining is
regularised by the masking itself (MAE, He et al. 2022, pretrains without dropout), and
at ``base`` size CBraMod's dropout 0.1 still costs about 9 % of a CPU train step with
:mod:`brainfm.models.dropout`'s cheaper masks (about 30 % with ``nn.Dropout``'s; measured
with ``benchmarks/bench_backbone.py``). Fine-tuning turns it on through overrides, e.g.
``ModelConfig.from_name("base", dropout=0.1)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from brainfm.models.activations import MODEL_ACTIVATIONS
from brainfm.signal import CHANNEL_TYPES, SensorSpec, check_sfreq

#: Physical amplitude that maps to 1.0 at the encoder input, per channel type (in the
#: order of :data:`brainfm.signal.CHANNEL_TYPES`, in the units of :data:`brainfm.signal.UNITS`).
#: EEG/iEEG: 100 uV, as CBraMod's pretraining normalisation; MEG magnetometers: 1000 fT and
#: planar gradiometers: 100 fT/cm (typical raw std on the Neuromag test file is ~380 fT and
#: ~60 fT/cm, so both land at O(0.1-1)); BOLD is already unitless.
DEFAULT_INPUT_SCALE: tuple[float, ...] = (100.0, 1000.0, 100.0, 1.0, 100.0, 100.0, 100.0)

#: Radius (metres) that positions of each channel type are divided by: EEG head radius
#: ~0.095 m, MEG helmet radius ~0.12 m (0.118 m measured on Neuromag, 0.126 m on KIT),
#: intracranial contacts and BOLD parcels use the head radius.
DEFAULT_POSITION_SCALE: tuple[float, ...] = (0.095, 0.12, 0.12, 0.095, 0.095, 0.095, 0.095)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a brainfm encoder.

    Parameters
    ----------
    name : str
        Preset name (informational).
    n_layers, d_model, n_heads, d_ff : int
        Transformer depth, width, heads (half spatial, half temporal) and feed-forward width.
    sfreq : float
        Sampling rate (Hz) the model expects; inputs must already be resampled to it.
    patch_seconds : float
        Patch duration; ``sfreq * patch_seconds`` must be an integer number of samples.
    max_patches : int
        Longest window, in patches, the temporal position table covers.
    activation : {'gelu', 'silu', 'ash'}
        Activation used everywhere in the model.
    dropout : float
        Dropout on the residual branches and the feed-forward hidden layer.
    attn_dropout : float
        Dropout on attention probabilities. Default 0: any non-zero value forces PyTorch's
        unfused "math" SDPA path (a materialised attention matrix, plus copies), which
        costs more than the regularisation is worth in pretraining.
    n_channel_types : int
        Rows of the type-embedding table (at least ``len(CHANNEL_TYPES)``).
    conv_channels : int
        Channels of the temporal conv branch of the patch embedding.
    sensor_hidden : int
        Hidden width of the sensor-geometry MLP.
    log_spectrum : bool
        Add a third branch to the patch embedding: the patch's log power spectrum
        (``log |rFFT|^2``, fixed centring), projected to ``d_model``. The conv branch
        normalises each patch and the linear spectral branch sees magnitudes near 0.004,
        so without it tokens hardly carry absolute power, the quantity log band power
        classifiers live on (measured in docs/results.md, "alignment"). Files written
        before this field existed load with ``False``.
    split_attention : bool
        If True (CBraMod's layout), spatial heads see only the first half of the features
        and temporal heads the second half, each with its own QKV and output projection.
        If False, one fused QKV and one output projection span all features (2x the
        attention-projection FLOPs).
    input_scale : tuple of float
        Per-type divisor bringing physical units to O(1); see :data:`DEFAULT_INPUT_SCALE`.
    position_scale : tuple of float
        Per-type divisor (metres) for sensor positions; see :data:`DEFAULT_POSITION_SCALE`.
    norm_eps : float
        LayerNorm epsilon.
    """

    name: str = "custom"
    n_layers: int = 2
    d_model: int = 32
    n_heads: int = 4
    d_ff: int = 64
    sfreq: float = 200.0
    patch_seconds: float = 1.0
    max_patches: int = 64
    activation: str = "gelu"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    n_channel_types: int = len(CHANNEL_TYPES)
    conv_channels: int = 8
    sensor_hidden: int = 32
    log_spectrum: bool = True
    split_attention: bool = True
    input_scale: tuple[float, ...] = field(default=DEFAULT_INPUT_SCALE)
    position_scale: tuple[float, ...] = field(default=DEFAULT_POSITION_SCALE)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_scale", tuple(float(v) for v in self.input_scale))
        object.__setattr__(self, "position_scale", tuple(float(v) for v in self.position_scale))
        for key in ("n_layers", "d_model", "n_heads", "d_ff", "max_patches", "conv_channels",
                    "sensor_hidden"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.n_heads % 2:
            raise ValueError(f"n_heads must be even (half spatial, half temporal), got {self.n_heads}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in MODEL_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(MODEL_ACTIVATIONS)}"
            )
        for key in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if not (math.isfinite(self.sfreq) and self.sfreq > 0):
            raise ValueError(f"sfreq must be positive, got {self.sfreq}")
        samples = self.sfreq * self.patch_seconds
        if self.patch_seconds <= 0 or abs(samples - round(samples)) > 1e-6:
            raise ValueError(
                f"patch of {self.patch_seconds} s at {self.sfreq:g} Hz is not a whole number "
                "of samples"
            )
        if round(samples) < 8:
            raise ValueError(f"a patch must have at least 8 samples, got {round(samples)}")
        if self.n_channel_types < len(CHANNEL_TYPES):
            raise ValueError(
                f"n_channel_types={self.n_channel_types} is smaller than the "
                f"{len(CHANNEL_TYPES)} known types {CHANNEL_TYPES}"
            )
        for key in ("input_scale", "position_scale"):
            vals = getattr(self, key)
            if len(vals) != self.n_channel_types or not all(v > 0 for v in vals):
                raise ValueError(f"{key} needs {self.n_channel_types} positive values, got {vals}")

    # -- derived ----------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        """Samples per patch."""
        return int(round(self.sfreq * self.patch_seconds))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # -- presets ----------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """The preset called ``name`` with ``overrides`` applied (then re-validated)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; available: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def for_signal(self, spec: SensorSpec, window_s: float) -> "ModelConfig":
        """Check that windows of ``window_s`` seconds of ``spec`` fit this model.

        Raises
        ------
        ValueError
            If the sampling rates differ, the window is shorter than a patch or not a
            whole number of patches, longer than ``max_patches``, a channel type is
            outside the type table, or a channel has no position (names listed).

        Returns
        -------
        ModelConfig
            ``self`` (configs are immutable), so calls chain.
        """
        check_sfreq(spec.sfreq, self.sfreq)
        self.check_window(int(round(window_s * self.sfreq)))
        missing = [n for n, ok in zip(spec.ch_names, spec.has_positions) if not ok]
        if missing:
            raise ValueError(f"channels without a position (the tokenizer needs them): {missing}")
        bad = [n for n, t in zip(spec.ch_names, spec.type_indices()) if t >= self.n_channel_types]
        if bad:
            raise ValueError(f"channels with a type outside the model's table: {bad}")
        return self

    def check_window(self, n_samples: int) -> int:
        """Validate a window length in samples and return its number of patches.

        The window must be a whole number of patches: brainfm raises rather than crops,
        so no data is silently dropped.
        """
        p = self.patch_size
        if n_samples < p:
            raise ValueError(
                f"window of {n_samples} samples ({n_samples / self.sfreq:g} s) is shorter than "
                f"one patch ({p} samples = {self.patch_seconds:g} s)"
            )
        if n_samples % p:
            raise ValueError(
                f"window of {n_samples} samples is not a multiple of the {p}-sample patch; "
                f"crop it to {n_samples // p * p} samples"
            )
        n_patches = n_samples // p
        if n_patches > self.max_patches:
            raise ValueError(
                f"window of {n_patches} patches exceeds max_patches={self.max_patches}"
            )
        return n_patches

    # -- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["input_scale"] = list(self.input_scale)
        d["position_scale"] = list(self.position_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise.

        Fields added after a file was written take their value for the architecture
        the file holds (:data:`LEGACY_DEFAULTS`), not today's default.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**{**LEGACY_DEFAULTS, **d})


#: Values of fields that did not exist when older config dicts were written: a dict
#: without the key describes that older architecture.
LEGACY_DEFAULTS: dict[str, Any] = {"log_spectrum": False}


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny", n_layers=2, d_model=32, n_heads=4, d_ff=64, max_patches=64,
        conv_channels=8, sensor_hidden=32,
    ),
    "small": ModelConfig(
        name="small", n_layers=6, d_model=128, n_heads=8, d_ff=512, max_patches=128,
        conv_channels=16, sensor_hidden=64,
    ),
    "base": ModelConfig(
        name="base", n_layers=12, d_model=200, n_heads=8, d_ff=800, max_patches=128,
        conv_channels=25, sensor_hidden=128,
    ),
}


#: Encoder families besides brainfm's own, by the ``encoder_kind`` tag of their serialised
#: config: ``kind -> (config class, encoder class)``. Their modules register themselves
#: (:func:`register_encoder_kind`), so this module imports none of them.
ENCODER_KINDS: dict[str, tuple[type, type]] = {}


def register_encoder_kind(kind: str, config_class: type, encoder_class: type) -> None:
    """Let configs tagged ``encoder_kind: kind`` load, and decoders build ``encoder_class``."""
    ENCODER_KINDS[kind] = (config_class, encoder_class)


def config_from_dict(d: dict[str, Any]) -> Any:
    """A serialised config -> its config object: a :class:`ModelConfig`, or the registered
    class of its ``encoder_kind`` (e.g. :class:`brainfm.models.cbramod.CBraModConfig`)."""
    kind = d.get("encoder_kind")
    if kind is None:
        return ModelConfig.from_dict(d)
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder_kind {kind!r}; known: {', '.join(sorted(ENCODER_KINDS)) or 'none'} "
                         "(import brainfm.models to register the built-in ones)")
    return ENCODER_KINDS[kind][0].from_dict(d)


def encoder_class(config: Any) -> type | None:
    """The registered encoder class of a non-brainfm config, or None for a :class:`ModelConfig`."""
    for config_class, encoder in ENCODER_KINDS.values():
        if isinstance(config, config_class):
            return encoder
    return None


def resolve_config(model: str | dict[str, Any] | ModelConfig,
                   overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The one config resolver: a preset name, a serialised config dict (a
    :meth:`ModelConfig.to_dict` or a registered kind's) or a config object, with
    ``overrides`` (fields replaced, then re-validated) applied."""
    if isinstance(model, str):
        config = ModelConfig.from_name(model)
    elif isinstance(model, dict):
        config = config_from_dict(model)
    else:
        config = model
    return dataclasses.replace(config, **overrides) if overrides else config
