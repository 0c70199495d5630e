"""Issue #12 pieces: artifact rejection, type-balanced loss, the neighbour baseline,
the log-power branch of the patch embedding and the hybrid head.

Maths on synthetic signals; behaviour on the real recordings of the small sample store.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from brainfm.data.artifacts import AMPLITUDE, FLAT, LINE, RejectionCriteria, line_power_ratio
from brainfm.data.datamodule import DecodingDataModule, PretrainDataModule
from brainfm.data.dataset import FixedWindows, ShuffledWindows, collate_windows
from brainfm.data.store import ShardStore
from brainfm.models import (BrainDecoder, BrainEncoder, ModelConfig, load_decoder, load_pretrained, read_weights,
                            resolve_config, save_decoder, save_encoder)
from brainfm.models.tokenizer import LOG_POWER_SCALE, PatchEmbedding
from brainfm.pretrained import (HALF_RECIPES, RECIPE_UNTRAINED, RECIPE_VALIDATED, RECIPES, recipe_encoder, trained_on,
                                validated_on)
from brainfm.tasks import DecodeModule, PretrainModule
from brainfm.tasks.pretrain import mean_baseline, neighbour_baseline, random_patch_mask, type_balanced_mse

SFREQ = 200.0


# -- artifact rules (maths) -------------------------------------------------------------
def test_rules_flag_amplitude_flat_and_line_noise():
    t = np.arange(2000) / SFREQ
    clean = 20 * np.sin(2 * np.pi * 10 * t)  # 20 uV alpha
    windows = np.stack([
        np.stack([clean, clean]),
        np.stack([clean, 150 * np.sin(2 * np.pi * 3 * t)]),  # over 100 uV
        np.stack([clean, np.full_like(t, 5.0)]),  # flat
        np.stack([clean, 30 * np.sin(2 * np.pi * 50 * t)]),  # mains
    ])
    codes = RejectionCriteria().codes(windows, ["eeg", "eeg"], SFREQ, line_freq=50.0)
    assert codes.tolist() == [0, AMPLITUDE, FLAT, LINE]
    # no mains frequency known: the line rule is skipped
    assert RejectionCriteria().codes(windows, ["eeg", "eeg"], SFREQ, None).tolist() == [0, AMPLITUDE, FLAT, 0]
    # types without a threshold are not checked
    assert RejectionCriteria().codes(windows[1:2], ["eeg", "bold"], SFREQ, None).tolist() == [0]


def test_line_ratio_of_a_pure_harmonic_is_one():
    t = np.arange(400) / SFREQ
    x = np.sin(2 * np.pi * 60 * t)[None, None]
    assert line_power_ratio(x, SFREQ, 60.0)[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert line_power_ratio(np.zeros((1, 1, 400)), SFREQ, 60.0)[0, 0] == 0.0


def test_criteria_from_config_values():
    assert RejectionCriteria.resolve(None) is None and RejectionCriteria.resolve(False) is None
    assert RejectionCriteria.resolve({}) == RejectionCriteria.resolve(True) == RejectionCriteria()
    custom = RejectionCriteria.resolve({"max_amplitude": {"eeg": 150.0}, "max_line_ratio": None})
    assert custom.max_amplitude == {"eeg": 150.0} and custom.max_line_ratio is None
    with pytest.raises(ValueError, match="unknown rejection settings"):
        RejectionCriteria.resolve({"max_amp": 1})
    with pytest.raises(ValueError, match="positive"):
        RejectionCriteria(max_amplitude={"eeg": -1.0})


# -- artifact rejection on real recordings ----------------------------------------------
def test_rejection_on_real_windows_is_consistent(small_sample):
    store = ShardStore(str(small_sample[1]))
    ids = [r for r in store.recording_ids if r.startswith("sub-eegmat")]
    criteria = RejectionCriteria()
    kept = FixedWindows(store, 10.0, recordings=ids, reject=criteria)
    every = FixedWindows(store, 10.0, recordings=ids)
    counts = kept.rejections
    assert set(counts) == set(kept.recordings)
    total_rejected = sum(c.rejected for c in counts.values())
    assert sum(c.windows for c in counts.values()) == len(every)
    assert len(kept) == len(every) - total_rejected
    assert total_rejected > 0  # real EEGMAT has blinks over 100 uV
    peaks = [np.abs(s["x"].numpy() - s["x"].numpy().mean(1, keepdims=True)).max() for s in kept]
    assert max(peaks) <= 100.0
    # the shuffled pretraining loader yields exactly the kept windows
    shuffled = ShuffledWindows(store, 10.0, recordings=ids, reject=criteria, buffer_size=8)
    got = sorted((s["recording"], s["start"]) for s in shuffled)
    want = sorted((kept.recordings[int(i)], int(s)) for i, s in zip(kept.rec_index, kept.starts))
    assert got == want and len(shuffled) == len(want)


def test_pretrain_datamodule_counts_rejections(small_sample):
    dm = PretrainDataModule(str(small_sample[1]), window_s=10.0, reject={}, val_subjects=["eegmat28"],
                            exclude_subjects=["eegmat32"])
    dm.setup()
    counts = dm.rejections
    assert any(c.rejected for c in counts.values())
    assert all(c.windows >= c.rejected >= 0 for c in counts.values())


# -- losses and baselines ---------------------------------------------------------------
def test_type_balanced_mse_weights_each_type_equally():
    pred = torch.zeros(1, 3, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]], [[3.0, 3.0]]]])  # (1, 3, 1, 2)
    mask = torch.ones(1, 3, 1, dtype=torch.bool)
    types = torch.tensor([[0, 0, 1]])
    # type 0: MSE 1, type 1: MSE 9 -> mean 5 (the plain mean would be 11/3)
    assert float(type_balanced_mse(pred, target, mask, types, 7)) == pytest.approx(5.0)


def test_neighbour_baseline_interpolates_from_visible_neighbours():
    # four channels on a line; channel 1 masked, its neighbours 0 and 2 at equal distance
    geometry = torch.zeros(1, 4, 6)
    geometry[0, :, 0] = torch.tensor([0.0, 0.01, 0.02, 0.05])
    target = torch.tensor([1.0, 0.0, 3.0, 100.0]).view(1, 4, 1, 1).expand(1, 4, 1, 2).clone()
    mask = torch.zeros(1, 4, 1, dtype=torch.bool)
    mask[0, 1] = True
    pred = neighbour_baseline(target, mask, geometry, torch.zeros(1, 4, dtype=torch.long),
                              torch.ones(1, 4, dtype=torch.bool), k=2)
    assert float(pred[0, 1, 0, 0]) == pytest.approx(2.0)  # (1 + 3) / 2


def test_neighbour_baseline_beats_mean_baseline_on_real_eeg(small_sample):
    store = ShardStore(str(small_sample[1]))
    ids = [r for r in store.recording_ids if r.startswith("sub-eegmat")][:4]
    ds = FixedWindows(store, 10.0, recordings=ids)
    batch = collate_windows([ds[i] for i in range(0, len(ds), max(1, len(ds) // 16))])
    module = PretrainModule("tiny")
    target = module.encoder.patchify(batch["x"], batch["sensor_type"], batch["channel_mask"])
    patch_mask = random_patch_mask(batch["channel_mask"], target.shape[2], 0.5, torch.Generator().manual_seed(0))
    mean_err = ((mean_baseline(target, patch_mask) - target) ** 2)[patch_mask].mean()
    out = {"target": target, "patch_mask": patch_mask}
    near_err = module.neighbour_loss(batch, out)
    assert float(near_err) < float(mean_err)  # volume conduction: neighbours share signal


# -- the log-power branch ---------------------------------------------------------------
def test_log_power_branch_turns_a_gain_into_a_fixed_shift():
    # A gain g moves ln|X|^2 by 2 ln g in every bin, whatever the patch: the branch adds
    # W @ (2 ln g / SCALE) to the token, so absolute power reaches it at any amplitude.
    torch.manual_seed(0)
    patches = torch.randn(4, 200)  # 100 uV: every bin's power far above the floor eps
    with_log = PatchEmbedding(ModelConfig.from_name("tiny"))
    without = PatchEmbedding(ModelConfig.from_name("tiny", log_spectrum=False))
    without.load_state_dict({k: v for k, v in with_log.state_dict().items() if "log_spectral" not in k})
    with torch.no_grad():
        branch = lambda p: with_log(p) - without(p)  # noqa: E731
        shift = branch(patches * 3) - branch(patches)  # (4, D)
        expected = with_log.log_spectral_proj.weight.sum(1) * 2 * math.log(3) / LOG_POWER_SCALE  # (D,)
    torch.testing.assert_close(shift, expected.expand_as(shift), atol=1e-2, rtol=1e-2)  # bins near eps bend it


def test_configs_without_the_field_load_as_the_older_architecture():
    d = ModelConfig.from_name("tiny").to_dict()
    del d["log_spectrum"]
    assert resolve_config(d).log_spectrum is False
    assert ModelConfig.from_name("tiny").log_spectrum is True


# -- the hybrid head --------------------------------------------------------------------
def test_hybrid_decoder_needs_features_and_round_trips(tmp_path):
    decoder = BrainDecoder(ModelConfig.from_name("tiny"), 2, n_features=3, hybrid={"features": ["hjorth"]}).eval()
    b, c, t = 2, 4, 400
    args = (torch.randn(b, c, t) * 20, torch.rand(b, c, 6) * 0.05, torch.zeros(b, c, dtype=torch.long),
            torch.ones(b, c, dtype=torch.bool))
    with pytest.raises(ValueError, match="hybrid head"):
        decoder(*args)
    decoder.feature_mean.fill_(1.0)
    feats = torch.tensor([[1.0, float("nan"), 2.0], [0.0, 1.0, 1.0]])
    logits = decoder(*args, features=feats)
    save_decoder(decoder, tmp_path / "d.safetensors")
    again = load_decoder(tmp_path / "d.safetensors")
    assert again.hybrid == {"features": ["hjorth"]} and again.n_features == 3
    torch.testing.assert_close(again(*args, features=feats), logits)


def test_hybrid_fine_tune_on_real_windows(small_sample, tmp_path):
    dm = DecodingDataModule(str(small_sample[1]), split={"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"],
                            "test": ["eegmat32"]}, window_s=5.0, label_map={"rest": 0, "arithmetic": 1},
                            batch_size=16, normalize="zscore")
    module = DecodeModule("tiny", hybrid=True, lr=1e-3)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    std = module.decoder.feature_std
    assert module.decoder.n_features == 15 and bool((std > 0).all()) and not bool((std == 1).all())
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    module.export_safetensors(tmp_path / "decoder.safetensors")
    reloaded = DecodeModule(init_from=str(tmp_path / "decoder.safetensors"), mode="reset")
    assert reloaded.feature_spec is not None
    torch.testing.assert_close(reloaded.decoder.feature_mean, module.decoder.feature_mean)


# -- the shipped recipe encoder ---------------------------------------------------------
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_encoder_ships_with_its_hash(recipe):
    encoder = load_pretrained(recipe_encoder(recipe))
    config = encoder.config
    assert (config.name, config.n_layers, config.d_model, config.log_spectrum) == ("small", 6, 128, True)
    x = torch.randn(1, 19, 2000) * 10
    geometry = torch.zeros(1, 19, 6)
    geometry[0, :, 0] = torch.linspace(-0.08, 0.08, 19)
    tokens = encoder.eval()(x, geometry, torch.zeros(1, 19, dtype=torch.long), torch.ones(1, 19, dtype=torch.bool))
    assert tokens.shape == (1, 19, 10, 128) and bool(torch.isfinite(tokens).all())


# -- what a pretraining saw: no held-out subject leaks into an evaluation ------------------
def test_exported_encoder_records_the_subjects_it_trained_on(small_sample, tmp_path):
    _, store = small_sample
    module = PretrainModule("tiny", warmup_steps=1, max_steps=1)
    data = PretrainDataModule(str(store), window_s=2.0, batch_size=4, val_subjects=["eegmat28"],
                              exclude_subjects=["eegmat32"])
    pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(module, data)
    module.export_safetensors(tmp_path / "encoder.safetensors")
    subjects = ["eegmat00", "eegmat01", "eegmat28", "eegmat32"]
    assert trained_on(tmp_path / "encoder.safetensors", subjects) == ["eegmat00", "eegmat01"]


def test_trained_on_knows_the_shipped_recipes_and_refuses_an_unrecorded_encoder(tmp_path):
    for recipe in RECIPES:
        seen = trained_on(recipe_encoder(recipe), [f"eegmat{i:02d}" for i in range(36)])
        assert seen == [f"eegmat{i:02d}" for i in range(28)] and not set(seen) & RECIPE_UNTRAINED
        assert validated_on(recipe_encoder(recipe), [f"eegmat{i:02d}" for i in range(36)]) == sorted(RECIPE_VALIDATED)
    save_encoder(BrainEncoder(ModelConfig.from_name("tiny")), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="does not record the subjects"):
        trained_on(tmp_path / "bare.safetensors", ["eegmat00"])
    with pytest.raises(ValueError, match="does not record the subjects that validated"):
        validated_on(tmp_path / "bare.safetensors", ["eegmat00"])


def test_half_split_encoders_record_disjoint_halves():
    """The two-encoder LOSO protocol's shipped files (checked by SHA-256): each read one half of
    EEGMAT, so each subject has an encoder that never read it (``benchmarks/bench_loso.py``)."""
    eegmat = [f"eegmat{i:02d}" for i in range(36)]
    read = []
    for recipe in sorted(HALF_RECIPES):
        path = recipe_encoder(recipe)
        read.append(set(trained_on(path, eegmat)) | set(validated_on(path, eegmat)))
        assert len(trained_on(path, eegmat)) == 16 and len(validated_on(path, eegmat)) == 2
        assert read_weights(path).config.name == "small"
    assert not read[0] & read[1] and read[0] | read[1] == set(eegmat)
