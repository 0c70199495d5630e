"""Mixed EEG + MEG + BOLD pretraining batches through the data pipeline (``brainfm.data.mixed``).

Real stores: the session's small sample (EEGMAT/EEGMMIDB EEG and the MEG excerpts at 200 Hz)
and its fMRI sample's grid-atlas ROI store (nitime runs at TR 1.35 s). A mixed batch is fed
to :class:`brainfm.tasks.PretrainModule` by a Lightning ``Trainer``.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from brainfm.data.mixed import MixedBatchSampler, MixedDataModule, bold_to_patches
from brainfm.data.store import ShardStore
from brainfm.signal import CHANNEL_TYPES
from brainfm.tasks.pretrain import PretrainModule

BOLD = CHANNEL_TYPES.index("bold")


@pytest.fixture(scope="module")
def stores(small_sample):
    _, store = small_sample
    return str(store), str(store.parent / "fmri" / "store-roi")


def test_mixed_batch_holds_eeg_and_bold_at_the_model_rate(stores):
    dm = MixedDataModule(list(stores), per_batch={"eeg": 3, "bold": 2}, n_patches=4, volumes_per_patch=4, seed=1)
    dm.setup("fit")
    assert dm.summary.sfreq == 200.0 and dm.summary.window_s == 4.0
    assert {s.ch_types[0] for s in dm.summary.specs} >= {"eeg", "bold"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[0] == 5 and batch["x"].shape[-1] == 800 and batch["sfreq"] == 200.0
    types = batch["sensor_type"][:, 0].tolist()
    assert types[3:] == [BOLD, BOLD] and BOLD not in types[:3]
    roi = ShardStore(stores[1])
    for i in (3, 4):  # each BOLD window is its 16 stored volumes, interpolated per 4-volume patch
        rec = roi.recording(batch["recording"][i])
        start = int(batch["start"][i])
        want = bold_to_patches(torch.from_numpy(rec.read(start, start + 16)), 4, 200)
        c = rec.spec.n_channels
        torch.testing.assert_close(batch["x"][i, :c], want)
        assert bool(batch["channel_mask"][i, :c].all()) and not bool(batch["channel_mask"][i, c:].any())
        np.testing.assert_allclose(batch["sensor_geometry"][i, :c, :3].numpy(), rec.spec.positions, atol=1e-6)


def test_sampler_draws_fixed_counts_per_source_and_covers_the_largest():
    sampler = MixedBatchSampler([10, 3], [2, 1], seed=0)
    batches = list(sampler)
    assert len(batches) == 5 and all(len(b) == 3 for b in batches)
    assert sorted(i for b in batches for i in b[:2]) == list(range(10))  # source 0 seen exactly once
    assert all(10 <= b[2] < 13 for b in batches)  # source 1 cycled
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(ValueError, match="no window"):
        MixedBatchSampler([10, 0], [2, 1])


def test_mixed_eeg_meg_bold_batches_train_the_pretraining_module(stores, tmp_path):
    torch.manual_seed(0)
    eeg, meg = "sub-eegmat00_task-rest_eeg", "sub-kitsqd_task-rest_meg"  # 19 EEG; 157 magnetometers, 2 s
    val = ["sub-eegmat01_task-rest_eeg", "sub-kitmq_task-rest_meg", "sub-nitime02_task-rest_bold"]
    bold_train = "sub-nitime01_task-rest_bold"
    dm = MixedDataModule(list(stores), per_batch={"eeg": 2, "meg": 1, "bold": 2}, n_patches=2,
                         recordings=[eeg, meg, bold_train, *val], val_recordings=val, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["recording"][2] == meg and set(batch["recording"][3:]) == {bold_train}
    assert not set(batch["recording"]) & set(val)  # held out for validation
    model = PretrainModule("tiny", loss_balance="type", warmup_steps=0, max_steps=4, lr=2e-3)
    before = model.encoder.tokenizer.sensor_embedding.type_embedding.weight.detach().clone()
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        val_check_interval=2,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert trainer.global_step == 4 and torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    after = model.encoder.tokenizer.sensor_embedding.type_embedding.weight
    for name in ("eeg", "mag", "bold"):  # every modality's type embedding was trained
        assert not torch.equal(before[CHANNEL_TYPES.index(name)], after[CHANNEL_TYPES.index(name)]), name
    with pytest.raises(ValueError, match="no usable bold window"):
        MixedDataModule([stores[0]], per_batch={"eeg": 2, "bold": 2}).setup("fit")
