"""Quantized deployment on a decoder fine-tuned on real EEGMAT windows (issue #6).

One ``tiny`` decoder is fine-tuned per module (subjects eegmat00/01, 10 short epochs) and
written by ``DecodeModule`` as ``decoder.safetensors`` next to its (CSV) logs; every test
starts from it. Accuracy
is compared on the held-out subject eegmat32 (windows every second) and on the training
windows, where the fp32 model is well above chance, so that flipped decisions would show.

Thresholds sit below what was measured here (``tiny``, 128 calibration windows):
logits SQNR W8A8 + SmoothQuant ~56 dB, W4A16 g64 + AWQ ~33 dB; onnxruntime fp32 max
|diff| ~6e-7.

onnxruntime int8 (7-bit weights, the default): dynamic 46.2 dB, static QDQ 38.8 dB, bit-identical
on an AVX-512 VNNI host and under ``qemu-x86_64 -cpu Haswell`` (AVX2, no VNNI), because 7-bit
weights cannot saturate the int16 pair sums of ``vpmaddubsw``. With 8-bit weights the same
files gave 52.2 / 39.9 dB with VNNI but 27.3 / 29.1 dB without: the failures of issue #10 were
the CPU's int8 kernels, not the onnxruntime version or the fixture (it trains bit-identically
from seed 0 on the locked stack). The bounds keep ~6 dB below the portable figures;
:func:`test_int8_weights_cannot_saturate_without_vnni` checks the property that makes them
portable.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from brainfm.cli import main
from brainfm.deploy import (EncoderGraph, W4A16Linear, W8A8Linear, calibrate, calibration_batches, load,
                            load_checkpoint, onnx_session, quantize, quantize_onnx, read_config, run_onnx,
                            save_bundle)
from brainfm.deploy.calibrate import decoder_inputs
from brainfm.deploy.normalization import ONNX_WINDOW_KEY, onnx_properties
from brainfm.kernels.reference import sqnr_db, w4a16_linear_ref, w8a8_linear_ref

TRAIN, TEST = ["eegmat00", "eegmat01"], ["eegmat32"]
LABELS = {"rest": 0, "arithmetic": 1}
# scheme: (min logits SQNR dB, max balanced-accuracy change in points, min prediction agreement)
BOUNDS = {"w8a8": (40.0, 1.0, 0.98), "w4a16": (25.0, 2.0, 0.95)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread_reference_kernels(one_thread_reference_kernels):
    """One thread, CPU reference kernels (tests/conftest.py) for every test here."""


def _batches(store: str, subjects: list[str], stride_s: float) -> list[dict]:
    from brainfm.data import EntityLabels, FixedWindows, ShardStore, collate_windows

    s = ShardStore(store)
    ds = FixedWindows(s, 5.0, stride_s, s.select(subjects), EntityLabels("task", LABELS))
    return list(torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=collate_windows))


@pytest.fixture(scope="module")
def tuned(small_sample, tmp_path_factory):
    """A tiny decoder fine-tuned on two EEGMAT subjects, its files and real windows."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from brainfm.data.datamodule import DecodingDataModule
    from brainfm.tasks.decode import DecodeModule

    _, store = small_sample
    store = str(store)
    root = tmp_path_factory.mktemp("deploy")
    L.seed_everything(0, verbose=False)
    dm = DecodingDataModule(store=store, split={"train": TRAIN, "val": ["eegmat28"], "test": TEST},
                            label_map=LABELS, batch_size=16, stride_s=2.5)
    module = DecodeModule(model="tiny", mode="full", lr=3e-3, head_dropout=0.0)
    trainer = L.Trainer(max_epochs=10, logger=CSVLogger(root, name="fit"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=root)
    trainer.fit(module, dm)
    trainer.save_checkpoint(root / "decode.ckpt")
    ckpt = Path(trainer.log_dir) / "decoder.safetensors"  # written by DecodeModule at the end of fit
    assert ckpt.is_file()
    calib = list(calibration_batches(store, 128, 5.0, subjects=TRAIN))
    decoder = load_checkpoint(ckpt)
    return SimpleNamespace(store=store, root=root, ckpt=ckpt, decoder=decoder, calib=calib,
                           stats=calibrate(decoder, calib, 128),
                           sets={"test": _batches(store, TEST, 1.0), "train": _batches(store, TRAIN, 5.0)})


def _logits(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(*decoder_inputs(b)) for b in batches])


def _balanced_accuracy(logits: torch.Tensor, batches: list[dict]) -> float:
    y = torch.cat([b["label"] for b in batches])
    pred = logits.argmax(1)
    return 100 * float(np.mean([(pred[y == c] == c).float().mean() for c in y.unique()]))


@pytest.fixture(scope="module")
def quantized(tuned):
    return {s: quantize(tuned.decoder, s, stats=tuned.stats, smoothquant=True) for s in ("w8a8", "w4a16")}


def test_checkpoint_formats_load_the_same_decoder(tuned):
    from_ckpt = load_checkpoint(tuned.root / "decode.ckpt")
    x = decoder_inputs(tuned.sets["test"][0])
    with torch.inference_mode():
        assert torch.equal(from_ckpt(*x), tuned.decoder(*x))
    assert from_ckpt.window_s == tuned.decoder.window_s == 5.0  # the fit's window, recorded in both
    from brainfm.models import save_encoder

    save_encoder(tuned.decoder.encoder, tuned.root / "encoder.safetensors")
    with pytest.raises(ValueError, match="encoder without a head"):
        load_checkpoint(tuned.root / "encoder.safetensors")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tuned.root / "missing.safetensors")


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16"])
def test_layer_swap_coverage(scheme, tuned, quantized):
    model, cfg = quantized[scheme], quantized[scheme].deploy_config
    float_linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    quant = {n for n, m in model.named_modules() if isinstance(m, (W8A8Linear, W4A16Linear))}
    # every linear but the 6-input sensor MLP layer and the 2-class logits layer is quantized
    assert float_linears == set(cfg["float_layers"]) == {"encoder.tokenizer.sensor_embedding.mlp.0", "head.linear"}
    assert quant == set(cfg["layers"])
    assert all(f"encoder.blocks.{i}.{p}" in quant for i in range(2)
               for p in ("qkv_s", "qkv_t", "out_s", "out_t", "ff.linear1", "ff.linear2"))
    patch = "encoder.tokenizer.patch_embedding"
    assert {f"{patch}.temporal_proj", f"{patch}.spectral_proj"} < quant
    # convolutions, norms and embeddings stay float and untouched
    for name, m in tuned.decoder.named_modules():
        if isinstance(m, (nn.Conv1d, nn.LayerNorm, nn.GroupNorm, nn.Embedding)):
            assert torch.equal(model.get_submodule(name).weight, m.weight), name
    if scheme == "w8a8":  # GELU fused into the FFN-up GEMM
        assert cfg["fused_activations"] == ["encoder.blocks.0.ff.activation", "encoder.blocks.1.ff.activation"]
        assert model.get_submodule("encoder.blocks.0.ff.linear1").activation == "gelu"
    assert not any(isinstance(m, (W8A8Linear, W4A16Linear)) for m in tuned.decoder.modules())  # input untouched


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16"])
def test_accuracy_on_real_windows(scheme, tuned, quantized):
    min_sqnr, max_points, min_agree = BOUNDS[scheme]
    for part, batches in tuned.sets.items():
        ref, got = _logits(tuned.decoder, batches), _logits(quantized[scheme], batches)
        assert sqnr_db(ref, got) >= min_sqnr, part
        assert abs(_balanced_accuracy(got, batches) - _balanced_accuracy(ref, batches)) <= max_points, part
        assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= min_agree, part
    # the fp32 model fits its training subjects, so the comparison above has decisions to lose
    assert _balanced_accuracy(_logits(tuned.decoder, tuned.sets["train"]), tuned.sets["train"]) >= 75


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16"])
def test_activation_aware_scaling_against_round_to_nearest(scheme, tuned, quantized):
    plain = quantize(tuned.decoder, scheme, stats=tuned.stats, smoothquant=False)
    batches = tuned.sets["test"]
    ref = _logits(tuned.decoder, batches)
    scaled, rtn = sqnr_db(ref, _logits(quantized[scheme], batches)), sqnr_db(ref, _logits(plain, batches))
    # measured before the patch embedding's log-power branch: W8A8 52.4 -> 56.0 dB with SmoothQuant,
    # W4A16 28.8 -> 33.5 dB with the AWQ-style search. With it (2026-11-30, same fixture recipe):
    # W4A16 47.6 dB round-to-nearest, 44.7 dB AWQ-style; its per-layer gains on the calibration rows
    # (checked below) no longer carry end to end to the test subject, so both schemes are held to
    # "not far behind" rather than "better".
    assert scaled >= rtn - (3.5 if scheme == "w4a16" else 1.0), (scaled, rtn)
    if scheme == "w4a16":  # the per-layer alpha search never does worse than alpha = 0 on its own rows
        searched, plain_report = quantized[scheme].deploy_config["report"], plain.deploy_config["report"]
        assert all(searched[n]["calib_output_sqnr_db"] >= r["calib_output_sqnr_db"] - 1e-3
                   for n, r in plain_report.items())


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16"])
def test_bundle_round_trip_without_pickle(scheme, tuned, quantized, tmp_path, monkeypatch):
    out = save_bundle(quantized[scheme], tmp_path / scheme, extra={"note": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "weights.safetensors"]

    def refuse(*args, **kwargs):
        raise AssertionError("bundle loading must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = load(out)
    x = decoder_inputs(tuned.sets["test"][0])
    with torch.inference_mode():
        assert torch.equal(model(*x), quantized[scheme](*x))
    cfg = read_config(out)
    assert cfg["scheme"] == scheme and cfg["extra"] == {"note": "test"} and cfg["decoder"]["n_classes"] == 2
    assert set(cfg["layers"]) == set(quantized[scheme].deploy_config["layers"])
    from safetensors import safe_open

    with safe_open(os.fspath(out / "weights.safetensors"), framework="pt") as f:
        key = "encoder.blocks.0.ff.linear1." + ("qweight" if scheme == "w8a8" else "packed")
        assert f.get_tensor(key).dtype == (torch.int8 if scheme == "w8a8" else torch.uint8)


def test_bundle_validation(tuned, quantized, tmp_path):
    out = save_bundle(quantized["w8a8"], tmp_path / "b")
    good = json.loads((out / "bundle.json").read_text())

    def broken(change, match):
        doc = json.loads(json.dumps(good))
        change(doc)
        (out / "bundle.json").write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=match):
            load(out)

    broken(lambda d: d.update(format="pickle"), "format")
    broken(lambda d: d.update(scheme="w2a2"), "scheme")
    broken(lambda d: d["layers"].update({"encoder.nope": d["layers"]["encoder.blocks.0.qkv_s"]}),
           "no layer 'encoder.nope'")
    broken(lambda d: d["layers"]["encoder.blocks.0.qkv_s"].update(in_features=17), "shape")
    broken(lambda d: d["layers"]["encoder.blocks.0.qkv_s"].update(activation="relu"), "activation")
    broken(lambda d: d["decoder"].update(code="import os"), "unknown decoder fields")
    broken(lambda d: d["decoder"].update(token_stats="false"), "token_stats must be true or false")
    broken(lambda d: d["decoder"].update(deploy_subject=["eegmat00"]), "deploy_subject must be a subject id")
    broken(lambda d: d["decoder"].update(window_s=0), "window_s must be a length in s > 0")
    (out / "bundle.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load(out)
    (out / "bundle.json").write_text(json.dumps(good))
    with open(out / "weights.safetensors", "r+b") as fh:  # flip one weight byte
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match="SHA-256"):
        load(out)
    with pytest.raises(FileNotFoundError, match="not a brainfm bundle"):
        load(tmp_path)


@pytest.mark.parametrize("k", [101, 64, 16])  # spectral projection (101 = 2 groups, the last short), FFN, QKV
def test_quant_linears_match_the_integer_references(k, monkeypatch):
    torch.manual_seed(0)
    linear = nn.Linear(k, 24)
    x = torch.randn(37, k) * 3
    smooth = torch.rand(k) + 0.5
    w8 = W8A8Linear.from_float(linear, smooth, activation="gelu")
    w4 = W4A16Linear.from_float(linear, smooth, group_size=64)
    want8 = w8a8_linear_ref(*_per_token(x * smooth), w8.qweight, w8.w_scale, w8.bias, "gelu")
    want4 = w4a16_linear_ref(x * smooth, w4.packed, w4.scales, 64, w4.bias)
    for interpret in ("0", "1"):  # the reference path and the Triton kernels (interpreted)
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
        torch.testing.assert_close(w8(x), want8, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w4(x), want4, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        y = linear(x)
    assert sqnr_db(nn.functional.gelu(y), w8(x)) > 35 and sqnr_db(y, w4(x)) > 15


def _per_token(x: torch.Tensor):
    from brainfm.kernels.reference import quantize_per_token_ref

    return quantize_per_token_ref(x)


def test_cli_quantize(tuned, quantized, tmp_path, capsys):
    out = tmp_path / "bundle"
    args = ["quantize", "--ckpt", str(tuned.ckpt), "--scheme", "w8a8", "--calib", tuned.store, "--out", str(out),
            "--windows", "128", "--calib-subjects", *TRAIN, "--no-progress"]
    assert main(args) == 0
    assert "prediction agreement" in capsys.readouterr().out
    # the same windows and settings as the Python API give the same bundle contents
    x = decoder_inputs(tuned.sets["test"][0])
    with torch.inference_mode():
        torch.testing.assert_close(load(out)(*x), quantized["w8a8"](*x), rtol=0, atol=0)
    with pytest.raises(SystemExit):
        main(["quantize", "--ckpt", str(tuned.ckpt), "--scheme", "w8a8", "--out", str(out)])  # no --calib
    assert main(["quantize", "--ckpt", str(tuned.ckpt), "--scheme", "w4a16", "--out", str(tmp_path / "rtn"),
                 "--no-smoothquant"]) == 0
    assert read_config(tmp_path / "rtn")["smoothquant"] is False
    # w4a16 defaults to round-to-nearest (the AWQ search cost accuracy on a real decoder), so no --calib needed
    assert main(["quantize", "--ckpt", str(tuned.ckpt), "--scheme", "w4a16", "--out", str(tmp_path / "dflt")]) == 0
    assert read_config(tmp_path / "dflt")["smoothquant"] is False
    assert main(["quantize", "--ckpt", str(tuned.ckpt), "--scheme", "w8a8", "--calib", tuned.store, "--out", str(out),
                 "--calib-subjects", "nobody"]) == 1  # one line on stderr, no traceback (tests/test_reliability.py)


@pytest.fixture(scope="module")
def onnx_fp32(tuned):
    path = tuned.root / "decoder.onnx"
    assert main(["export", "--ckpt", str(tuned.ckpt), "--onnx", str(path)]) == 0
    return path


def test_onnx_fp32_parity(tuned, onnx_fp32):
    session = onnx_session(onnx_fp32)
    for batches in tuned.sets.values():
        for b in batches:
            x = decoder_inputs(b)
            torch.testing.assert_close(run_onnx(session, *x), tuned.decoder(*x).detach(), rtol=1e-4, atol=1e-4)
    # dynamic axes: a padded mixed-montage batch of another length and size
    x, geometry, types, mask = (t[:3].clone() for t in decoder_inputs(tuned.sets["test"][0]))
    x, mask[1, -4:] = x[..., :600], False
    geometry[1, -4:] = float("nan")  # padded channels may carry anything
    with torch.inference_mode():
        want = tuned.decoder(x, geometry, types, mask)
    torch.testing.assert_close(run_onnx(session, x, geometry, types, mask), want, rtol=1e-4, atol=1e-4)


def test_encoder_graph_is_the_encoder_without_its_checks(tuned):
    """The traced encoder (what the ONNX graph and the latency benchmark run) gives the
    encoder's tokens on real windows, padded channels included."""
    x, geometry, types, mask = (t[:3].clone() for t in decoder_inputs(tuned.sets["test"][0]))
    encoder = tuned.decoder.encoder.eval()
    graph = EncoderGraph(encoder)
    with torch.inference_mode():
        # no padding: the encoder skips the spatial key mask, the graph passes an all-True one
        torch.testing.assert_close(graph(x, geometry, types, mask), encoder(x, geometry, types, mask),
                                   rtol=1e-5, atol=1e-5)
        mask[1, -4:] = False
        torch.testing.assert_close(graph(x, geometry, types, mask), encoder(x, geometry, types, mask),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,min_sqnr", [("dynamic", 40.0), ("static", 32.0)])
def test_onnx_int8(mode, min_sqnr, tuned, onnx_fp32, tmp_path):
    path = quantize_onnx(onnx_fp32, tmp_path / f"{mode}.onnx", mode, tuned.calib, 128)
    assert path.stat().st_size < onnx_fp32.stat().st_size
    session = onnx_session(path)
    for part, batches in tuned.sets.items():
        ref = _logits(tuned.decoder, batches)
        got = torch.cat([run_onnx(session, *decoder_inputs(b)) for b in batches])
        sqnr = sqnr_db(ref, got)
        assert sqnr >= min_sqnr, f"{part}: logits SQNR {sqnr:.2f} dB < {min_sqnr} dB"
        assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= 0.97, part
        assert abs(_balanced_accuracy(got, batches) - _balanced_accuracy(ref, batches)) <= 2.0, part


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_weights_cannot_saturate_without_vnni(mode, tuned, onnx_fp32, tmp_path):
    """Every int8 weight lies in [-64, 64], so a uint8 x int8 pair sum stays below 2**15 on
    AVX2 (``2·255·64 = 32640``): the quantized file computes the same logits on any x86 CPU."""
    import onnx
    from onnx import numpy_helper

    def largest_int8_weight(path: Path) -> int:
        weights = [numpy_helper.to_array(t) for t in onnx.load(os.fspath(path)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert weights, f"no int8 weight matrices in {path.name}"
        return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)

    assert largest_int8_weight(quantize_onnx(onnx_fp32, tmp_path / f"{mode}.onnx", mode, tuned.calib, 128)) <= 64
    full = quantize_onnx(onnx_fp32, tmp_path / f"{mode}-8bit.onnx", mode, tuned.calib, 128, reduce_range=False)
    assert largest_int8_weight(full) == 127


def test_cli_export_int8(tuned, tmp_path, capsys):
    out = tmp_path / "model.int8.onnx"
    assert main(["export", "--ckpt", str(tuned.ckpt), "--onnx", str(out), "--int8", "--calib", tuned.store,
                 "--calib-subjects", *TRAIN, "--windows", "64", "--no-progress"]) == 0
    assert "int8 dynamic" in capsys.readouterr().out
    import onnx

    ops = {n.op_type for n in onnx.load(os.fspath(out)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear", "DFT"} <= ops
    assert onnx_properties(out)[0][ONNX_WINDOW_KEY] == "5.0"  # kept through onnxruntime's quantizer
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(tuned.ckpt), "--onnx", str(out), "--int8", "--int8-mode", "static"])
