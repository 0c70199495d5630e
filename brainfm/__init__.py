"""brainfm: brain-signal foundation models for EEG, MEG and fMRI."""

from brainfm.signal import CHANNEL_TYPES, SensorSpec

__all__ = ["CHANNEL_TYPES", "SensorSpec", "__version__"]
__version__ = "0.1.0"
