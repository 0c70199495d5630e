"""The encoder on real windows of every recording type in the sample store, alone and mixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainfm.data import FixedWindows, ShardStore, collate_windows
from brainfm.models import BrainEncoder, ModelConfig
from brainfm.tasks import PretrainModule


@pytest.fixture(scope="module")
def windows(small_sample):
    _, url = small_sample
    store = ShardStore(url)
    ds = FixedWindows(store, 1.0)
    first = [int(np.flatnonzero(ds.rec_index == i)[0]) for i in range(len(ds.recordings))]
    return ds, [ds[k] for k in first]


def test_every_recording_type(windows):
    ds, samples = windows
    kinds = {tuple(sorted(set(s["spec"].ch_types))) for s in samples}
    assert {("eeg",), ("mag",), ("grad", "mag"), ("eeg", "grad", "mag")} <= kinds
    torch.manual_seed(0)
    encoder = BrainEncoder(ModelConfig.from_name("tiny"))
    for sample in samples:
        batch = collate_windows([sample])
        out = encoder(batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"])
        out.float().pow(2).mean().backward()
        assert torch.isfinite(out).all(), sample["recording"]
        assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
        encoder.zero_grad()


def test_mixed_montage_batch_trains(windows):
    _, samples = windows
    module = PretrainModule("tiny")
    batch = collate_windows(samples)
    assert batch["channel_mask"].sum(1).unique().numel() > 3  # really mixed
    out = module.masked_loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["n_tokens"] == int(batch["channel_mask"].sum())
