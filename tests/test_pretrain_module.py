"""PretrainModule: masking, loss, schedule, a short CPU training run, export."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from brainfm.models import ModelConfig, load_pretrained
from brainfm.tasks import PretrainModule
from brainfm.tasks.base import warmup_cosine
from brainfm.tasks.pretrain import masked_mse, mean_baseline, random_patch_mask
from brainfm.signal import SensorSpec, collate_sensors

SFREQ = 200.0


def _spec(n: int, ch_type: str = "eeg", seed: int = 0) -> SensorSpec:
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n, 3))
    loc = np.zeros((n, 12))
    loc[:, :3] = 0.09 * pos / np.linalg.norm(pos, axis=1, keepdims=True)
    loc[:, 9:12] = loc[:, :3] / 0.09
    return SensorSpec([f"{ch_type}{i}" for i in range(n)], [ch_type] * n, loc, SFREQ)


def make_batch(seconds: float = 4.0, seed: int = 0) -> dict:
    """19-ch EEG + 8-ch MEG (padded) batch: noise plus sinusoids at realistic amplitude."""
    g = torch.Generator().manual_seed(seed)
    batch = collate_sensors([_spec(19), _spec(8, "mag", seed=1)])
    b, c = batch["channel_mask"].shape
    t = torch.arange(int(seconds * SFREQ)) / SFREQ
    freqs = torch.rand(b, c, 1, generator=g) * 20 + 2
    phase = torch.rand(b, c, 1, generator=g) * 2 * math.pi
    amp = torch.where(batch["sensor_type"] == 0, 30.0, 400.0)[..., None]  # uV / fT
    signal = torch.sin(2 * math.pi * freqs * t + phase) + 0.3 * torch.randn(b, c, t.numel(), generator=g)
    batch["x"] = (amp * signal).float()
    batch.update(sfreq=torch.tensor(SFREQ), recording=["r0", "r1"], subject=["s0", "s1"])
    return batch


def test_init_from_name_dict_and_config():
    a = PretrainModule("tiny", model_overrides={"dropout": 0.0})
    assert a.config == ModelConfig.from_name("tiny")
    b = PretrainModule(a.config.to_dict())
    c = PretrainModule(ModelConfig.from_name("tiny", d_model=16, n_heads=2))
    assert b.config == a.config and c.encoder.config.d_model == 16
    assert isinstance(c.hparams["model"], dict)  # plain types in hparams
    with pytest.raises(ValueError, match="mask_ratio"):
        PretrainModule("tiny", mask_ratio=1.0)


def test_mask_only_real_channels():
    mask = torch.tensor([[True] * 3 + [False] * 2])
    pm = random_patch_mask(mask, 50, 0.5, torch.Generator().manual_seed(0))
    assert pm.shape == (1, 5, 50) and not pm[0, 3:].any()
    assert 0.3 < pm[0, :3].float().mean() < 0.7


def test_loss_only_on_masked_patches():
    target = torch.randn(1, 2, 3, 4)
    pm = torch.zeros(1, 2, 3, dtype=torch.bool)
    pm[0, 1, 2] = True
    pred = target.clone()
    pred[~pm] += 100.0  # errors on visible patches do not count
    assert masked_mse(pred, target, pm) == 0
    pred[0, 1, 2] += 2.0
    torch.testing.assert_close(masked_mse(pred, target, pm), torch.tensor(4.0))


def test_mean_baseline():
    target = torch.arange(6.0).reshape(1, 1, 3, 2)  # patches [0,1], [2,3], [4,5]
    pm = torch.tensor([[[False, True, False]]])
    base = mean_baseline(target, pm)
    torch.testing.assert_close(base, torch.full_like(target, 2.5))  # mean of 0,1,4,5


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_target_in_encoder_units():
    module = PretrainModule("tiny")
    batch = make_batch()
    target = module.encoder.patchify(batch["x"], batch["sensor_type"], batch["channel_mask"])
    torch.testing.assert_close(target[0, 0, 0], batch["x"][0, 0, :200] / 100.0)  # EEG / 100 uV
    torch.testing.assert_close(target[1, 0, 1], batch["x"][1, 0, 200:400] / 1000.0)  # mag / 1000 fT
    assert (target[1, 8:] == 0).all()  # padded channels


def test_short_training_lowers_masked_loss():
    torch.manual_seed(0)
    module = PretrainModule("tiny", lr=3e-3, warmup_steps=3, max_steps=30, weight_decay=0.0)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    batch = make_batch()

    def eval_loss() -> tuple[float, float]:
        module.eval()
        with torch.no_grad():
            out = module.masked_loss(batch, generator=torch.Generator().manual_seed(123))
        module.train()
        return float(out["loss"]), float(out["baseline"])

    before, baseline = eval_loss()
    for _ in range(30):
        loss = module.masked_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    after, _ = eval_loss()
    assert math.isfinite(after) and after < 0.7 * before, (before, after, baseline)


# Lightning 2.6's pytree helper uses torch's deprecated LeafSpec check (torch 2.11); not ours.
def test_trainer_logs_metrics(tmp_path):
    batches = [make_batch(seed=i) for i in range(3)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    module = PretrainModule("tiny", warmup_steps=1, max_steps=3)
    trainer = pl.Trainer(
        max_steps=3, limit_val_batches=1, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/samples_per_s", "train/tokens_per_s", "val/loss",
                "val/loss_mean_baseline"):
        assert key in logged and torch.isfinite(logged[key]), key


def test_sfreq_mismatch_is_rejected():
    batch = make_batch()
    batch["sfreq"] = 250.0
    with pytest.raises(ValueError, match="sampling rate 250 Hz does not match the model's 200 Hz"):
        PretrainModule("tiny").masked_loss(batch)


def test_export_safetensors_round_trip(tmp_path):
    module = PretrainModule("tiny", model_overrides={"activation": "ash"}).eval()
    path = tmp_path / "encoder.safetensors"
    module.export_safetensors(path)
    encoder = load_pretrained(path)
    assert encoder.config == module.config
    batch = make_batch()
    args = (batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"])
    with torch.no_grad():
        torch.testing.assert_close(encoder(*args), module.encoder(*args))


# torch.compile imports inductor, which defines torch.jit script modules at import time.
def test_compile_flag_wraps_blocks():
    module = PretrainModule("tiny", compile=True)
    module.configure_model()
    assert all(block._compiled_call_impl is not None for block in module.encoder.blocks)
