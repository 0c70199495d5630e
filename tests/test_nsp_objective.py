"""The neurodynamics objective: precomputed targets equal on-the-fly ones, and the loss wires up."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from brainfm.data import FixedWindows, ShardStore, ShuffledWindows, collate_windows, evenly_spaced, window_loader
from brainfm.cli import main
from brainfm.targets import TargetSpec, compute_targets, target_names
from brainfm.tasks import PretrainModule


@pytest.fixture(scope="module")
def store_with_targets(small_sample, tmp_path_factory):
    """``brainfm convert BIDS STORE --targets 2.0`` on an up-to-date store: converts
    nothing, precomputes the 2-s targets."""
    bids, url = small_sample
    copy = tmp_path_factory.mktemp("targets") / "store"
    shutil.copytree(url, copy)
    assert main(["convert", str(bids), str(copy), "--workers", "1", "--no-progress", "--targets", "2.0"]) == 0
    (key,) = ShardStore(copy).manifest["targets"]
    return copy, key


def test_precomputed_targets_equal_on_the_fly(store_with_targets):
    url, key = store_with_targets
    store = ShardStore(url)
    assert store.manifest["targets"][key]["names"] == target_names(TargetSpec())
    ds = FixedWindows(store, 2.0, targets=key)
    picks = np.linspace(0, len(ds) - 1, 12).astype(int)
    batch = collate_windows([ds[int(k)] for k in picks])
    fresh = compute_targets(batch["x"], 200.0, batch["channel_mask"], batch["sensor_geometry"], TargetSpec())
    torch.testing.assert_close(batch["targets"], fresh, rtol=1e-5, atol=1e-6, equal_nan=True)
    # the pretraining path sees the same rows, and stride multiples are allowed
    sample = next(iter(ShuffledWindows(store, 2.0, 4.0, targets=key, seed=0)))
    row = ds[int(np.flatnonzero((ds.starts == sample["start"]) &
                                (np.asarray(ds.recordings)[ds.rec_index] == sample["recording"]))[0])]["targets"]
    torch.testing.assert_close(sample["targets"], row)


def test_target_set_must_match_windows(store_with_targets):
    url, key = store_with_targets
    with pytest.raises(ValueError, match="2.0 s windows"):
        FixedWindows(url, 4.0, targets=key)
    with pytest.raises(ValueError, match="multiple of that stride"):
        FixedWindows(url, 2.0, 1.0, targets=key)
    with pytest.raises(KeyError, match="no target set"):
        FixedWindows(url, 2.0, targets="nope")


def test_nsp_loss_and_statistics(small_sample):
    _, url = small_sample
    module = PretrainModule("tiny", nsp_weight=0.5, target_stats_windows=48)
    ds = ShuffledWindows(url, 2.0, seed=0)

    windows = FixedWindows(url, 2.0)  # ds's windows as PretrainDataModule.statistics_batches draws them
    module.fit_target_stats(window_loader(windows, evenly_spaced(len(windows), 48)))
    assert module.target_norm.count.min() > 0 and torch.isfinite(module.target_norm.std).all()
    batch = collate_windows([s for _, s in zip(range(8), iter(ds))])
    out = module.masked_loss(batch)
    out["loss"].backward()
    torch.testing.assert_close(out["loss"], out["recon"] + 0.5 * out["nsp"])
    assert module.nsp_head.net[-1].weight.grad.abs().sum() > 0
    state = module.state_dict()
    assert {"target_norm.mean", "target_norm.m2", "target_norm.count"} <= set(state)
    with pytest.raises(ValueError, match="nsp_weight"):
        PretrainModule("tiny", nsp_weight=-1.0)
