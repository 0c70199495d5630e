"""Fine-tuning, linear probe and reset-tuning on real EEGMAT windows; baselines; calibration splits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from brainfm.cli import main
from brainfm.data.datamodule import DecodingDataModule
from brainfm.data.splits import calibration_spans
from brainfm.models import BrainDecoder, BrainEncoder, ModelConfig, load_decoder, masked_mean, save_encoder
from brainfm.models.heads import AttentionPool
from brainfm.tasks import BaselineModule, DecodeModule
from brainfm.tasks.baselines import log_bandpower_features
from brainfm.tasks.classify import balanced_class_weights

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"rest": 0, "arithmetic": 1}
SPLIT = {"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.fixture(scope="module")
def data(small_sample):
    _, store = small_sample
    dm = DecodingDataModule(store=str(store), split=SPLIT, label_map=LABELS, batch_size=16)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    save_encoder(BrainEncoder(ModelConfig.from_name("tiny")), path)
    return path


@pytest.fixture(scope="module")
def finetuned(data, encoder_file, tmp_path_factory):
    """A decoder fine-tuned for a few steps with subject layers for the training subjects."""
    pl.seed_everything(0)
    module = DecodeModule(init_from=str(encoder_file), mode="full", subject_layers=True, classes=list(LABELS))
    _trainer(max_steps=6, limit_val_batches=2).fit(module, data)
    path = tmp_path_factory.mktemp("dec") / "decoder.safetensors"
    module.export_safetensors(path)
    return module, path


# -- pure maths ------------------------------------------------------------------------------
def test_calibration_spans_share_seconds_by_duration_and_never_overlap():
    calib, test = calibration_spans({"rest": 180.0, "task": 60.0}, 60.0)
    assert calib == {"rest": (0.0, 45.0), "task": (0.0, 15.0)}
    assert test == {"rest": (45.0, 180.0), "task": (15.0, 60.0)}
    calib, test = calibration_spans({"rest": 180.0, "task": 60.0}, 30.0, test_after=120.0)
    assert calib["rest"] == (0.0, 22.5) and test["rest"] == (90.0, 180.0)
    with pytest.raises(ValueError, match="leaves no test data"):
        calibration_spans({"rest": 10.0}, 10.0)
    with pytest.raises(ValueError, match="test_after"):
        calibration_spans({"rest": 100.0}, 30.0, test_after=10.0)


def test_balanced_class_weights():
    w = balanced_class_weights([30, 10])
    assert torch.allclose(w, torch.tensor([40 / 60, 40 / 20]))
    assert balanced_class_weights([5, 0]).tolist()[1] == 0.0


def test_attention_pool_with_zero_query_is_the_masked_mean():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    tokens = tokens * mask[:, :, None, None]
    pool = AttentionPool(8)
    assert torch.allclose(pool(tokens, mask), masked_mean(tokens, mask), atol=1e-6)
    pool.query.data.normal_()
    out = pool(tokens, mask)
    tokens2 = tokens.clone()
    tokens2[~mask] = 100.0  # padding must not leak in
    assert torch.allclose(pool(tokens2, mask), out, atol=1e-6)


# -- real data -------------------------------------------------------------------------------
def test_calibration_datamodule_cuts_each_recording_in_time(small_sample):
    _, store = small_sample
    dm = DecodingDataModule(store=str(store), label_map=LABELS, adapt_subjects=["eegmat32"], adapt_seconds=60.0,
                            adapt_test_after_s=120.0)
    dm.setup()
    train, test = dm.sets["train"], dm.sets["test"]
    assert dm.val_dataloader() == []
    sf = train.sfreq
    durations = {rid: train.store.entry(rid)["n_samples"] / sf for rid in train.recordings}
    total = sum(durations.values())  # about 180 s rest + 60 s arithmetic
    for i, rid in enumerate(train.recordings):
        ends = (train.starts[train.rec_index == i] + train.window) / sf
        starts = test.starts[test.rec_index == test.recordings.index(rid)] / sf
        assert ends.max() <= 60.0 / total * durations[rid] + 1e-9  # calibration: this recording's share of 60 s
        assert starts.min() >= 120.0 / total * durations[rid] - 1e-9  # test: after its share of 120 s
    # about 45 s of rest at a 1-s stride -> ~41 windows; about 15 s of arithmetic -> ~11
    counts = dm.class_counts("train")
    assert 38 <= counts[0] <= 42 and 9 <= counts[1] <= 12
    assert dm.subject_channels("train") == {"eegmat32": 19}


def test_subject_layers_start_as_identity_and_act_only_on_their_subject(data):
    torch.manual_seed(0)
    decoder = BrainDecoder(ModelConfig.from_name("tiny"), 2).eval()
    batch = next(iter(data.train_dataloader()))
    args = (batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"])
    shared = decoder(*args, batch["subject"])
    decoder.subjects.add("eegmat00", 19)
    assert torch.allclose(decoder(*args, batch["subject"]), shared, atol=1e-6)  # fresh layers = identity
    with torch.no_grad():
        decoder.subjects.get("eegmat00").mix_delta.normal_(0, 0.3)
    out = decoder(*args, batch["subject"])
    is00 = torch.tensor([s == "eegmat00" for s in batch["subject"]])
    assert is00.any() and (~is00).any()
    assert not torch.allclose(out[is00], shared[is00])
    assert torch.allclose(out[~is00], shared[~is00], atol=1e-6)


def test_full_finetune_logs_metrics_and_exports_a_decoder(finetuned, data):
    module, path = finetuned
    assert set(module.decoder.subjects.channels) == {"eegmat00", "eegmat01"}
    assert module.class_weight is not None and module.class_weight[1] > module.class_weight[0]  # rest is 3x arithmetic
    scores = _trainer().test(module, data, verbose=False)[0]
    assert {"test/balanced_accuracy", "test/kappa", "test/f1_weighted", "test/auroc"} <= set(scores)
    loaded = load_decoder(path)
    assert loaded.classes == ["rest", "arithmetic"] and loaded.subjects.channels == {"eegmat00": 19, "eegmat01": 19}
    batch = next(iter(data.test_dataloader()))
    args = (batch["x"], batch["sensor_geometry"], batch["sensor_type"], batch["channel_mask"], batch["subject"])
    module.decoder.eval()
    with torch.no_grad():
        assert torch.equal(loaded(*args), module.decoder(*args))


def test_linear_probe_trains_only_the_head(data, encoder_file):
    pl.seed_everything(0)
    module = DecodeModule(init_from=str(encoder_file), mode="linear", lr=1e-2)
    before = {k: v.clone() for k, v in module.decoder.encoder.state_dict().items()}
    head_before = module.decoder.head.linear.weight.clone()
    _trainer(max_steps=3, limit_val_batches=1).fit(module, data)
    after = module.decoder.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, module.decoder.head.linear.weight)


def test_reset_tuning_trains_only_the_new_subject_layers(finetuned, small_sample):
    _, store = small_sample
    _, path = finetuned
    dm = DecodingDataModule(store=str(store), label_map=LABELS, adapt_subjects=["eegmat32"], adapt_seconds=30.0,
                            batch_size=16)
    pl.seed_everything(0)
    module = DecodeModule(init_from=str(path), mode="reset", lr=1e-2)
    frozen = {k: v.clone() for k, v in module.decoder.state_dict().items()}
    _trainer(max_steps=4, limit_val_batches=0).fit(module, dm)
    state = module.decoder.state_dict()
    changed = {k for k in state if k not in frozen or not torch.equal(state[k], frozen[k])}
    assert changed and all(".s_eegmat32." in k for k in changed)
    assert {"eegmat00", "eegmat01", "eegmat32"} == set(module.decoder.subjects.channels)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == 19 * 19 + 2 * module.config.d_model
    scores = _trainer().test(module, dm, verbose=False)[0]
    assert 0.0 <= scores["test/balanced_accuracy"] <= 1.0


def test_reset_mode_refuses_an_encoder_only_file(encoder_file):
    with pytest.raises(ValueError, match="fine-tuned decoder"):
        DecodeModule(init_from=str(encoder_file), mode="reset")
    with pytest.raises(ValueError, match="give init_from"):
        DecodeModule(mode="reset")
    with pytest.raises(FileNotFoundError):
        DecodeModule(init_from="/nonexistent/encoder.safetensors")


def test_init_from_a_pretraining_checkpoint(small_sample, tmp_path, monkeypatch):
    """A PretrainModule .ckpt (read with weights_only=True) initialises the encoder."""
    from brainfm.tasks import PretrainModule

    module = PretrainModule(model="tiny")
    trainer = _trainer(max_steps=0)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(ckpt)
    dec = DecodeModule(init_from=str(ckpt))
    for k, v in module.encoder.state_dict().items():
        assert torch.equal(dec.decoder.encoder.state_dict()[k], v)


@pytest.mark.parametrize("name", ["EEGNet", "ShallowFBCSPNet"])
def test_braindecode_baselines_train_on_the_same_batches(name, data):
    pl.seed_everything(0)
    module = BaselineModule(name, n_chans=19, n_times=1000, sfreq=200.0)
    _trainer(max_steps=2, limit_val_batches=1).fit(module, data)
    scores = _trainer(limit_test_batches=2).test(module, data, verbose=False)[0]
    assert 0.0 <= scores["test/balanced_accuracy"] <= 1.0


def test_log_bandpower_features_match_mne_welch(data):
    from mne.time_frequency import psd_array_welch

    x = np.stack([data.sets["train"][k]["x"].numpy() for k in range(4)]).astype(np.float64)
    feats = log_bandpower_features(x, 200.0)
    assert feats.shape == (4, 19 * 5)
    psd, freqs = psd_array_welch(x, 200.0, fmin=8.0, fmax=13.0, n_fft=400, verbose=False)
    alpha = np.log(psd[..., (freqs >= 8) & (freqs < 13)].mean(-1) + 1e-12)
    assert np.allclose(feats.reshape(4, 19, 5)[..., 2], alpha)


def test_aligned_config_saves_the_subject_statistics_with_the_decoder(small_sample, encoder_file, tmp_path, monkeypatch):
    """configs/finetune/eegmat-aligned.yaml: Euclidean-aligned windows, statistics in decoder.safetensors."""
    _, store = small_sample
    monkeypatch.setattr(sys, "argv", ["brainfm"])
    monkeypatch.chdir(tmp_path)
    assert not main(["fit", "--config", str(ROOT / "configs/finetune/eegmat-aligned.yaml"), "--trainer.enable_progress_bar=false",
          "--trainer.log_every_n_steps=1",
          f"--data.init_args.store={store}", "--data.init_args.batch_size=8",
          '--data.init_args.split={"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}',
          f"--model.init_from={encoder_file}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=2"])
    decoder = load_decoder(tmp_path / "runs/finetune-eegmat-aligned/csv/version_0/decoder.safetensors")
    tensors, meta = decoder.normalization
    meta = json.loads(meta)
    assert meta["method"] == "align" and sorted(meta["subjects"]) == ["eegmat00", "eegmat01", "eegmat28", "eegmat32"]
    assert {m["source"] for m in meta["subjects"].values()} == {"session"}
    assert tensors["eegmat32.whitening"].shape == (19, 19)


def test_finetune_configs_through_the_cli(small_sample, encoder_file, tmp_path, monkeypatch):
    """configs/finetune: fine-tune, linear probe, then reset-tune the exported decoder and test it."""
    _, store = small_sample
    monkeypatch.setattr(sys, "argv", ["brainfm"])
    monkeypatch.chdir(tmp_path)
    common = ["--trainer.enable_progress_bar=false", f"--data.init_args.store={store}", "--data.init_args.batch_size=8",
              "--trainer.log_every_n_steps=1"]
    split = '--data.init_args.split={"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}'
    for name in ("eegmat", "eegmat-linear"):
        main(["fit", "--config", str(ROOT / f"configs/finetune/{name}.yaml"), *common, split,
              f"--model.init_from={encoder_file}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
              "--trainer.limit_val_batches=2"])
    decoder = tmp_path / "runs/finetune-eegmat/csv/version_0/decoder.safetensors"
    assert decoder.exists()
    reset = ["--config", str(ROOT / "configs/finetune/eegmat-reset.yaml"), *common, f"--model.init_from={decoder}",
             "--data.init_args.adapt_subjects=[eegmat32]", "--data.init_args.adapt_seconds=30"]
    main(["fit", *reset, "--trainer.max_steps=2"])
    ckpt = tmp_path / "runs/finetune-eegmat-reset/csv/version_0/checkpoints/last.ckpt"
    assert ckpt.exists()
    with pytest.warns(UserWarning, match="dirpath has changed"):  # new logger version, same run
        main(["test", *reset, f"--ckpt_path={ckpt}"])
    assert set(load_decoder(tmp_path / "runs/finetune-eegmat-reset/csv/version_0/decoder.safetensors").subjects.channels) \
        == {"eegmat32"}


def test_recipe_config_fine_tunes_the_shipped_encoder(small_sample, tmp_path, monkeypatch):
    """configs/finetune/eegmat-recipe.yaml: the shipped recipe encoder, alignment and label-free token
    statistics, as the ``recipe`` results row; the decoder keeps both kinds of subject statistics."""
    config = ROOT / "configs/finetune/eegmat-recipe.yaml"
    init_from = yaml.safe_load(config.read_text())["model"]["init_args"]["init_from"]
    assert (ROOT / init_from).exists(), f"{config.name} starts from {init_from}, which is not in the repository"
    _, store = small_sample
    monkeypatch.setattr(sys, "argv", ["brainfm"])
    monkeypatch.chdir(tmp_path)
    assert not main(["fit", "--config", str(config), "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
                     f"--data.init_args.store={store}", "--data.init_args.batch_size=8",
                     '--data.init_args.split={"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}',
                     f"--model.init_from={ROOT / init_from}", "--model.token_stats_windows=16",
                     "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"])
    decoder = load_decoder(tmp_path / "runs/finetune-eegmat-recipe/csv/version_0/decoder.safetensors")
    assert decoder.config.name == "small"
    assert json.loads(decoder.normalization[1])["method"] == "align"
    assert {"eegmat00", "eegmat01", "eegmat28"} <= set(decoder.subjects.channels)  # token statistics per subject
