"""Issue #12 item 1 on the deployment side: a decoder trained on subject-normalised windows keeps
its normalisation statistics (fitted on real EEGMAT signal) in every deployed form: quantized
bundles, fp32 ONNX and int8 ONNX, and a tampered copy is refused with the file named."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from brainfm.attention import DetectorConfig, detect_signal, read_session
from brainfm.attention.engagement import LIVE_USER, EngagementModel
from brainfm.data.datamodule import DecodingDataModule
from brainfm.data.normalize import SubjectNormalizer
from brainfm.data.sampling import calibration_windows
from brainfm.deploy import export_onnx, load, quantize, quantize_onnx, read_normalization, save_bundle
from brainfm.deploy.commands import _calib
from brainfm.deploy.normalization import ONNX_KEY, from_json, read_onnx, to_json
from brainfm.models import BrainDecoder, ModelConfig, load_decoder, save_decoder

SPLIT = {"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}


@pytest.fixture(scope="module", autouse=True)
def _reference_kernels(one_thread_reference_kernels):
    """One thread, CPU reference kernels (tests/conftest.py)."""


@pytest.fixture(scope="module")
def decoder(small_sample):
    """A tiny decoder carrying Euclidean-alignment statistics of four real EEGMAT subjects."""
    dm = DecodingDataModule(store=str(small_sample[1]), split=SPLIT, label_map={"rest": 0, "arithmetic": 1},
                            batch_size=8, normalize="align")
    dm.setup()
    torch.manual_seed(0)
    model = BrainDecoder(ModelConfig.from_name("tiny"), 2, classes=["rest", "arithmetic"]).eval()
    model.normalization = dm.normalizer.to_tensors()
    batch = next(iter(dm.test_dataloader()))
    return model, batch


def _assert_same(a, b) -> None:
    """Two ``(tensors, metadata)`` pairs are equal, value for value."""
    assert json.loads(a[1]) == json.loads(b[1])
    assert sorted(a[0]) == sorted(b[0])
    for key in a[0]:
        torch.testing.assert_close(a[0][key], b[0][key], rtol=0, atol=0)


def test_json_document_round_trips_float32_exactly(decoder):
    model, _ = decoder
    doc = json.loads(json.dumps(to_json(model.normalization)))
    _assert_same(from_json(doc, "test"), model.normalization)
    rebuilt = SubjectNormalizer.from_tensors(*from_json(doc, "test"))
    assert rebuilt.method == "align" and sorted(rebuilt.stats) == ["eegmat00", "eegmat01", "eegmat28", "eegmat32"]


def test_decoder_file_and_bundle_carry_the_statistics(decoder, tmp_path):
    model, batch = decoder
    save_decoder(model, tmp_path / "decoder.safetensors")
    _assert_same(read_normalization(tmp_path / "decoder.safetensors"), model.normalization)
    quantized = quantize(load_decoder(tmp_path / "decoder.safetensors"), "w8a8", smoothquant=False)
    save_bundle(quantized, tmp_path / "bundle")
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["format_version"] == 3
    _assert_same(read_normalization(tmp_path / "bundle"), model.normalization)
    loaded = load(tmp_path / "bundle")
    _assert_same(loaded.normalization, model.normalization)
    assert EngagementModel(tmp_path / "bundle").normalize_method == "align"  # the live path normalises
    # the bundle's statistics normalise a real window exactly as the training data module did
    norm = SubjectNormalizer.from_tensors(*loaded.normalization)
    reference = SubjectNormalizer.from_tensors(*model.normalization)
    x = batch["x"][0].numpy()
    np.testing.assert_array_equal(norm("eegmat32", x), reference("eegmat32", x))


def test_bundle_with_tampered_statistics_is_refused(decoder, tmp_path):
    model, _ = decoder
    save_bundle(quantize(model, "w8a8", smoothquant=False), tmp_path / "bundle")
    path = tmp_path / "bundle" / "bundle.json"
    doc = json.loads(path.read_text())
    key = next(iter(doc["normalization"]["tensors"]))
    doc["normalization"]["tensors"][key]["data"] = doc["normalization"]["tensors"][key]["data"][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="bundle.json.*normalization"):
        load(tmp_path / "bundle")


def test_onnx_fp32_and_int8_carry_the_statistics(decoder, tmp_path):
    model, _ = decoder
    path = export_onnx(model, tmp_path / "decoder.onnx")
    _assert_same(read_onnx(path), model.normalization)
    int8 = quantize_onnx(path, tmp_path / "decoder-int8.onnx")
    _assert_same(read_normalization(int8), model.normalization)
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert ONNX_KEY in session.get_modelmeta().custom_metadata_map
    _assert_same(read_onnx(session), model.normalization)
    assert EngagementModel(int8).normalize_method == "align"  # the live path normalises ONNX input too


def test_decoder_without_normalisation_deploys_without_statistics(tmp_path):
    torch.manual_seed(0)
    model = BrainDecoder(ModelConfig.from_name("tiny"), 2).eval()
    save_bundle(quantize(model, "w8a8", smoothquant=False), tmp_path / "bundle")
    assert read_normalization(tmp_path / "bundle") is None and load(tmp_path / "bundle").normalization is None
    assert read_onnx(export_onnx(model, tmp_path / "plain.onnx")) is None


def test_calibration_windows_are_normalised_as_in_training(decoder, small_sample, tmp_path, capsys):
    """`brainfm quantize/export --calib` calibrates on windows normalised as the decoder's training
    windows were (its method, each subject's session statistics), not on raw ones."""
    model, _ = decoder
    store = str(small_sample[1])
    args = SimpleNamespace(calib=store, window_s=5.0, calib_subjects=["eegmat00"], channel_types=None, batch_size=4)
    got = next(iter(_calib(args, model, 8)))["x"][0].numpy()
    raw, picks = calibration_windows(store, 8, 5.0, ["eegmat00"])
    want = SubjectNormalizer.from_tensors(*model.normalization)("eegmat00", raw[picks[0]]["x"].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert "normalised as in training (align" in capsys.readouterr().err


def test_live_statistics_are_fixed_after_calibration_or_follow_the_signal(decoder, shared_data, tmp_path):
    """The detector's two live sources (issue #12 item 1) on real EEG: ``calibration`` fixes the user's
    statistics after the first half of the calibration span; ``running`` (``stats_half_life_s``) keeps
    following the signal, so a gain change halfway through (a headset moved) is normalised away."""
    model, _ = decoder
    save_decoder(model, tmp_path / "decoder.safetensors")
    session = read_session([str(shared_data / "eegmat/Subject32_1.edf")])
    n = 60 * 500  # the first 60 s of rest
    signal = session.signal[:, :n]
    moved = signal.copy()
    moved[:, n // 2:] *= 3.0  # from 30 s on, every channel's gain is 3x

    def run(x, half_life):
        engagement = EngagementModel(tmp_path / "decoder.safetensors")
        config = DetectorConfig(calibration_s=10.0, stats_half_life_s=half_life)
        outputs = list(detect_signal(x, session.spec, config, engagement))
        return engagement._normalizer.stats[LIVE_USER], outputs[-1].decoder

    fixed, fixed_logit = run(signal, None)
    assert fixed.source == "calibration" and fixed.seconds == 5.0 and fixed.n_samples == 5.0 * 200
    fixed_moved, fixed_moved_logit = run(moved, None)
    np.testing.assert_allclose(fixed_moved.std, fixed.std)  # fixed: the gain change reaches the decoder
    running, running_logit = run(signal, 2.0)
    running_moved, running_moved_logit = run(moved, 2.0)
    assert running.source == "running" and running_moved.source == "running"
    # each hop adds 100 samples and the old ones fade by 2^(-0.5 / 2): after 50 s (25 half-lives) the
    # moments hold the geometric series' limit, 100 / (1 - 2^-0.25) samples' worth
    assert running.n_samples == pytest.approx(100 / (1 - 0.5 ** (0.5 / 2.0)), rel=1e-3)
    # 30 s after the change, at a 2-s half-life, the statistics follow it: std x3, the same whitened signal
    np.testing.assert_allclose(running_moved.std / running.std, 3.0, rtol=1e-3)
    assert running_moved_logit == pytest.approx(running_logit, abs=1e-3)
    assert abs(fixed_moved_logit - fixed_logit) > 10 * abs(running_moved_logit - running_logit)
    with pytest.raises(ValueError, match="stats_half_life_s must be at least one hop"):
        DetectorConfig(stats_half_life_s=0.1)
