"""Offline pipelines: BIDS to shard store conversion, presets, fetchers, the sample dataset."""

from brainfm.pipelines.presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
