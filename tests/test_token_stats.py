"""Label-free token statistics (brainfm.tasks.token_stats, issue #12 item 1): on real EEGMAT
windows, every subject's tokens come out standardised, the statistics never read labels or
other subjects, the calibration source stays inside the first seconds, a decoder trained
with them saves and reloads its subjects' layers, and every deployed form (ONNX, quantized
bundle, the detector's model) carries the chosen subject's layers or refuses to deploy without one."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from brainfm.attention import EngagementModel
from brainfm.cli import main
from brainfm.data import collate_windows
from brainfm.data.datamodule import DecodingDataModule
from brainfm.data.normalize import RunningMoments
from brainfm.data.splits import calibration_spans
from brainfm.deploy import load as load_bundle
from brainfm.deploy import onnx_session, run_onnx
from brainfm.deploy.calibrate import decoder_inputs
from brainfm.deploy.checkpoint import load_checkpoint
from brainfm.deploy.normalization import ONNX_SUBJECT_KEY, ONNX_WINDOW_KEY, onnx_properties
from brainfm.kernels.reference import sqnr_db
from brainfm.models import BrainDecoder, ModelConfig, load_decoder, save_decoder
from brainfm.tasks import DecodeModule
from brainfm.tasks.token_stats import adapt_dataset, match_subjects, token_moments, window_indices

LABELS = {"rest": 0, "arithmetic": 1}
SPLIT = {"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}
#: A quiet CPU trainer (plus max_steps for fitting).
QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, limit_val_batches=1)


def _dm(store, **kwargs) -> DecodingDataModule:
    dm = DecodingDataModule(store=str(store), batch_size=16, **{"split": SPLIT, "label_map": LABELS, **kwargs})
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def data(small_sample):
    return _dm(small_sample[1])


def _fitted(data, steps: int) -> tuple[DecodeModule, pl.Trainer]:
    """A tiny decoder trained with token statistics on ``data`` for ``steps`` steps (seed 0), and its trainer."""
    pl.seed_everything(0)
    module = DecodeModule(model="tiny", classes=list(LABELS), token_stats=True, token_stats_windows=8)
    trainer = pl.Trainer(max_steps=steps, **QUIET)
    trainer.fit(module, data)
    return module, trainer


def _decoder() -> BrainDecoder:
    torch.manual_seed(0)
    return BrainDecoder(ModelConfig.from_name("tiny"), 2).eval()


def test_adapted_tokens_are_standardised_per_subject(data):
    decoder = _decoder()
    ds = data.sets["train"]
    subjects = adapt_dataset(decoder, ds)
    assert subjects == ["eegmat00", "eegmat01"]
    loader = DataLoader(ds, batch_size=32, collate_fn=collate_windows)
    with torch.no_grad():
        for subject in subjects:
            adapter = decoder.subjects.get(subject)
            before = token_moments(decoder.encoder, (b for b in loader))[subject]
            mean, std = before.mean_std()
            # FiLM applied to the raw moments: mean 0 and std 1 in every feature
            torch.testing.assert_close(mean * adapter.token_scale + adapter.token_shift, torch.zeros_like(mean),
                                       atol=1e-4, rtol=0)
            torch.testing.assert_close(std * adapter.token_scale, torch.ones_like(std), atol=1e-4, rtol=0)
            assert not adapter.token_scale.requires_grad


def test_statistics_ignore_labels_and_other_subjects(small_sample, data):
    flipped = _dm(small_sample[1], label_map={"rest": 1, "arithmetic": 0})
    alone = _dm(small_sample[1], split={"train": ["eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]})
    a, b, c = _decoder(), _decoder(), _decoder()
    adapt_dataset(a, data.sets["train"])
    adapt_dataset(b, flipped.sets["train"])
    adapt_dataset(c, alone.sets["train"])
    for other in (b, c):
        torch.testing.assert_close(other.subjects.get("eegmat01").token_scale, a.subjects.get("eegmat01").token_scale)
        torch.testing.assert_close(other.subjects.get("eegmat01").token_shift, a.subjects.get("eegmat01").token_shift)


def test_calibration_source_uses_only_the_first_seconds(data):
    ds = data.sets["test"]
    idx = window_indices(ds, "calibration", seconds=40.0)["eegmat32"]
    durations = {rid: ds.store.entry(rid)["n_samples"] / ds.sfreq for rid in ds.recordings}
    calib, _ = calibration_spans(durations, 40.0)
    for k in idx:
        rid = ds.recordings[ds.rec_index[k]]
        assert (ds.starts[k] + ds.window) / ds.sfreq <= calib[rid][1] + 1e-9
    assert 0 < len(idx) < len(window_indices(ds, "session")["eegmat32"])
    with pytest.raises(ValueError, match="source"):
        window_indices(ds, "running")


def test_decoder_trained_with_token_statistics_round_trips(data, tmp_path):
    module, trainer = _fitted(data, steps=2)
    scores = trainer.test(module, data, verbose=False)[0]
    assert np.isfinite(scores["test/balanced_accuracy"])
    assert sorted(module.decoder.subjects.channels) == ["eegmat00", "eegmat01", "eegmat28", "eegmat32"]
    path = tmp_path / "decoder.safetensors"
    module.export_safetensors(path)
    decoder = load_decoder(path)
    assert decoder.window_s == data.hparams.window_s == 5.0  # the default window of detect/adapt/export
    for subject in module.decoder.subjects.channels:
        torch.testing.assert_close(decoder.subjects.get(subject).token_scale,
                                   module.decoder.subjects.get(subject).token_scale)
    with pytest.raises(ValueError, match="token_stats"):
        DecodeModule(model="tiny", token_stats=True, subject_layers=True)


def test_validate_before_fit_does_not_break_the_metrics(data):
    """trainer.validate (inference mode) before trainer.fit used to leave inference-tensor metric
    states, and fit's first validation failed with an in-place update error (notebooks 01-03)."""
    pl.seed_everything(0)
    module = DecodeModule(model="tiny", classes=list(LABELS))
    pl.Trainer(**QUIET).validate(module, data, verbose=False)
    pl.Trainer(max_steps=1, inference_mode=False, **QUIET).fit(module, data)
    assert "val/balanced_accuracy" in pl.Trainer(**QUIET).validate(module, data, verbose=False)[0]


def test_checkpoint_without_the_test_subjects_still_tests(data, tmp_path):
    """`brainfm test --ckpt_path` on a checkpoint saved before the test subjects had layers."""
    module, trainer = _fitted(data, steps=1)
    path = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "s_eegmat32" not in k}
    torch.save(ckpt, path)
    fresh = DecodeModule(model="tiny", classes=list(LABELS), token_stats=True)
    scores = pl.Trainer(**QUIET).test(fresh, data, ckpt_path=path, verbose=False)[0]
    assert np.isfinite(scores["test/balanced_accuracy"]) and "eegmat32" in fresh.decoder.subjects


def test_reset_tuning_starts_from_the_statistics_and_keeps_its_layers(small_sample, data, tmp_path):
    """mode='reset' on a token-statistics decoder: the new subject's FiLM starts at its label-free
    statistics (not the identity), only its layers train, and testing does not overwrite them."""
    module, _ = _fitted(data, steps=2)
    path = tmp_path / "decoder.safetensors"
    module.export_safetensors(path)
    calib = DecodingDataModule(store=str(small_sample[1]), batch_size=8, label_map=LABELS, window_s=5.0,
                               adapt_subjects=["eegmat32"], adapt_seconds=30.0, adapt_stride_s=5.0)
    calib.setup()
    reset = DecodeModule(init_from=str(path), mode="reset", token_stats=True, lr=0.0)
    no_val = {**QUIET, "limit_val_batches": 0}  # calibration data have no validation part
    pl.Trainer(max_steps=1, **no_val).fit(reset, calib)  # lr 0: the starting point
    start = reset.decoder.subjects.get("eegmat32")
    reference = _decoder()
    reference.load_state_dict(reset.decoder.state_dict(), strict=False)
    adapt_dataset(reference, calib.sets["train"])
    torch.testing.assert_close(start.token_scale, reference.subjects.get("eegmat32").token_scale)
    assert reset.hparams.reset_subjects == ["eegmat32"]

    reset = DecodeModule(init_from=str(path), mode="reset", token_stats=True, lr=1e-2)
    frozen = {k: v.clone() for k, v in reset.decoder.state_dict().items() if not k.startswith("subjects.")}
    pl.Trainer(max_steps=3, **no_val).fit(reset, calib)
    tuned = {k: v.clone() for k, v in reset.decoder.subjects.get("eegmat32").state_dict().items()}
    assert not torch.equal(tuned["token_scale"], start.token_scale)  # it trained
    for k, v in reset.decoder.state_dict().items():
        if k in frozen:
            torch.testing.assert_close(v, frozen[k])  # trunk and head untouched
    scores = pl.Trainer(**QUIET).test(reset, calib, verbose=False)[0]
    assert np.isfinite(scores["test/balanced_accuracy"])
    for k, v in reset.decoder.subjects.get("eegmat32").state_dict().items():
        torch.testing.assert_close(v, tuned[k])  # test-time statistics left the tuned layers alone
    reset.export_safetensors(tmp_path / "reset.safetensors")  # the file remembers which layers were trained
    reloaded = DecodeModule(init_from=str(tmp_path / "reset.safetensors"), mode="full", token_stats=True)
    pl.Trainer(**QUIET).test(reloaded, calib, verbose=False)
    for k, v in reloaded.decoder.subjects.get("eegmat32").state_dict().items():
        torch.testing.assert_close(v, tuned[k])


def test_deployed_forms_carry_the_subjects_layers(small_sample, data, tmp_path, capsys):
    """A token-statistics decoder has no shared model: export, quantize and the detector's model
    refuse it without --subject, and with one they give that subject's logits (FiLM, and the trained
    channel mixing of a reset-tuned subject), not the shared model's."""
    module, trainer = _fitted(data, steps=2)
    trainer.test(module, data, verbose=False)  # sets eegmat32's statistics
    path = tmp_path / "decoder.safetensors"
    module.export_safetensors(path)
    batch = next(iter(data.test_dataloader()))
    x = decoder_inputs(batch)
    with torch.inference_mode():
        want = module.decoder.eval()(*x, subjects=["eegmat32"] * len(x[0]))
        shared = module.decoder(*x)
    assert not torch.allclose(want, shared, atol=1e-3)  # the subject's layers matter

    with pytest.raises(ValueError, match="token statistics.*--subject.*eegmat32"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="no subject layers for 'eegmat99'"):
        load_checkpoint(path, "eegmat99")
    with torch.inference_mode():
        torch.testing.assert_close(load_checkpoint(path, "eegmat32")(*x), want)
    assert main(["export", "--ckpt", str(path), "--onnx", str(tmp_path / "d.onnx")]) == 1  # one line, no graph
    assert "--subject" in capsys.readouterr().err and not (tmp_path / "d.onnx").exists()
    assert main(["export", "--ckpt", str(path), "--onnx", str(tmp_path / "d.onnx"), "--subject", "eegmat32"]) == 0
    torch.testing.assert_close(run_onnx(onnx_session(tmp_path / "d.onnx"), *x), want, rtol=1e-4, atol=1e-4)
    props = onnx_properties(tmp_path / "d.onnx")[0]
    assert props[ONNX_SUBJECT_KEY] == "eegmat32" and props[ONNX_WINDOW_KEY] == "5.0"  # whose, and on what windows
    assert EngagementModel(tmp_path / "d.onnx", subject="eegmat32").kind == "onnx"
    with pytest.raises(ValueError, match="exported for eegmat32, not eegmat00"):
        EngagementModel(tmp_path / "d.onnx", subject="eegmat00")
    assert main(["quantize", "--ckpt", str(path), "--scheme", "w4a16", "--out", str(tmp_path / "b"),
                 "--subject", "eegmat32"]) == 0
    bundle = load_bundle(tmp_path / "b")
    assert bundle.deploy_subject == "eegmat32" and bundle.token_stats and bundle.window_s == 5.0
    with torch.inference_mode():
        got = bundle(*x)
        torch.testing.assert_close(got, bundle(*x, subjects=["eegmat32"] * len(got)), rtol=0, atol=0)
    assert sqnr_db(want, got) > sqnr_db(shared, got) + 3  # nearer the subject's logits than the shared model's
    live = EngagementModel(path)  # no subject: the person in front of the detector, set at calibration
    assert live.live_token_stats and live.needs_calibration
    spec = data.sets["test"].specs[0]
    with pytest.raises(RuntimeError, match="calibrate"):
        live.log_odds(x[0][0].numpy(), spec)
    live.calibrate(RunningMoments(spec.n_channels), spec, [w.numpy() for w in x[0]])
    reference = load_decoder(path)
    batch = {"x": x[0], "sensor_geometry": x[1], "sensor_type": x[2], "channel_mask": x[3],
             "subject": ["live-user"] * len(x[0])}
    match_subjects(reference, token_moments(reference.encoder, [batch]), {"live-user": spec.n_channels})
    torch.testing.assert_close(live.model.subjects.get("live-user").token_scale,
                               reference.subjects.get("live-user").token_scale)
    with torch.inference_mode():
        mine = torch.log_softmax(reference(*x, subjects=["live-user"] * len(x[0]))[0].double(), 0)
    assert live.log_odds(x[0][0].numpy(), spec) == pytest.approx(float(mine[1] - mine[0]), abs=1e-4)
    assert main(["detect", f"{small_sample[1]}::sub-eegmat32_task-arithmetic_eeg", "--out", str(tmp_path / "t"),
                 "--model", str(path), "--calibration-s", "20", "--no-progress", "--no-plot"]) == 0
    timeline = json.loads((tmp_path / "t" / "timeline.json").read_text())
    assert timeline["meta"]["window_s"] == 5.0  # the decoder's training window, not the indices' 4 s
    windows = timeline["windows"]
    assert sum(w["decoder"] is not None for w in windows) > len(windows) // 2  # the decoder ran after calibration
    model = EngagementModel(path, subject="eegmat32")
    expected = torch.log_softmax(want[0].double(), 0)
    assert model.log_odds(x[0][0].numpy(), spec) == pytest.approx(float(expected[1] - expected[0]), abs=1e-4)

    # a reset-tuned subject: trained mixing fixes the graph's channel count to the subject's
    calib = DecodingDataModule(store=str(small_sample[1]), batch_size=8, label_map=LABELS, window_s=5.0,
                               adapt_subjects=["eegmat32"], adapt_seconds=30.0, adapt_stride_s=5.0)
    calib.setup()
    reset = DecodeModule(init_from=str(path), mode="reset", token_stats=True, lr=1e-2)
    pl.Trainer(max_steps=3, **{**QUIET, "limit_val_batches": 0}).fit(reset, calib)
    assert reset.decoder.subjects.get("eegmat32").mix_delta.abs().max() > 0
    assert reset.decoder.window_s == 5.0  # the base decoder's window, which the calibration windows match
    reset.export_safetensors(tmp_path / "reset.safetensors")
    with torch.inference_mode():
        want = reset.decoder.eval()(*x, subjects=["eegmat32"] * len(x[0]))
    assert main(["export", "--ckpt", str(tmp_path / "reset.safetensors"), "--onnx", str(tmp_path / "r.onnx"),
                 "--subject", "eegmat32"]) == 0
    torch.testing.assert_close(run_onnx(onnx_session(tmp_path / "r.onnx"), *x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="token_stats: true"):
        DecodeModule(init_from=str(path), mode="reset")  # the head needs standardised tokens
    assert main(["adapt", "--ckpt", str(tmp_path / "reset.safetensors"), "--store", str(small_sample[1]),
                 "--subjects", "eegmat32", "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "reset-tuned on labels" in capsys.readouterr().err  # trained layers are not overwritten


def test_adapt_adds_a_new_subject_without_labels(small_sample, tmp_path, capsys):
    """A fit's file holds identity layers for its test subjects (never adapted): deploying one is refused
    and names `brainfm adapt`, which sets that subject's input and token statistics from its unlabelled
    session exactly as `brainfm test` would, and keeps everything else."""
    aligned = _dm(small_sample[1], normalize="align")
    module, trainer = _fitted(aligned, steps=2)
    path = tmp_path / "decoder.safetensors"
    module.export_safetensors(path)
    assert module.decoder.subjects.get("eegmat32").is_identity()
    with pytest.raises(ValueError, match="eegmat32's token statistics were never estimated.*brainfm adapt"):
        load_checkpoint(path, "eegmat32")
    adapted = tmp_path / "adapted.safetensors"
    assert main(["adapt", "--ckpt", str(path), "--store", str(small_sample[1]), "--subjects", "eegmat32",
                 "--out", str(adapted)]) == 0
    assert "eegmat32" in capsys.readouterr().out
    trainer.test(module, aligned, verbose=False)  # what the test loop sets for eegmat32
    got, want = load_decoder(adapted), module.decoder.eval()
    for name in ("token_scale", "token_shift"):
        torch.testing.assert_close(getattr(got.subjects.get("eegmat32"), name),
                                   getattr(want.subjects.get("eegmat32"), name), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.subjects.get("eegmat00").token_scale, want.subjects.get("eegmat00").token_scale)
    before, after = (json.loads(d.normalization[1])["subjects"]["eegmat32"] for d in (load_decoder(path), got))
    assert after == before  # the same session statistics as the training data module's
    x = decoder_inputs(next(iter(aligned.test_dataloader())))
    with torch.inference_mode():
        torch.testing.assert_close(load_checkpoint(adapted, "eegmat32")(*x),
                                   want(*x, subjects=["eegmat32"] * len(x[0])), rtol=1e-3, atol=1e-3)
        fewer = [t[:, :8] for t in x]  # a smaller headset: FiLM-only layers do not care about channel counts
        assert load_checkpoint(adapted, "eegmat32")(*fewer).shape == (len(x[0]), 2)
    plain = DecodeModule(model="tiny", classes=list(LABELS))
    plain.export_safetensors(tmp_path / "plain.safetensors")
    assert main(["adapt", "--ckpt", str(tmp_path / "plain.safetensors"), "--store", str(small_sample[1]),
                 "--subjects", "eegmat32", "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "not trained with token statistics" in capsys.readouterr().err


def test_files_written_before_the_record_are_recognised(tmp_path):
    """Decoder files that predate the ``token_stats`` record: FiLM set without channel mixing (only token
    statistics do that) marks one; trained subject layers, or reset-tuned ones, do not."""
    def old_file(decoder, name, extra=None):
        path = tmp_path / name
        save_decoder(decoder, path, extra=extra)
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        meta["decoder"] = json.dumps({k: v for k, v in json.loads(meta["decoder"]).items()
                                      if k not in ("token_stats", "deploy_subject")})
        save_file(load_file(str(path)), str(path), metadata=meta)
        return path

    decoder = BrainDecoder(ModelConfig.from_name("tiny"), 2, subject_channels={"a": 4, "b": 4})
    assert not load_decoder(old_file(decoder, "fresh.safetensors")).token_stats
    with torch.no_grad():
        decoder.subjects.get("a").token_scale.fill_(2.0)
    assert load_decoder(old_file(decoder, "stats.safetensors")).token_stats
    assert not load_decoder(old_file(decoder, "reset.safetensors", {"reset_subjects": ["a"]})).token_stats
    with torch.no_grad():
        decoder.subjects.get("a").mix_delta.fill_(0.01)
    assert not load_decoder(old_file(decoder, "trained.safetensors")).token_stats
