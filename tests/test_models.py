"""Contract tests for brainfm.models, driven by the preset registry and real montages.

Geometry is real (MNE montages, the Neuromag and KIT test files); signals are synthetic.
"""

from __future__ import annotations

import json
import warnings

import mne
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from brainfm.models import (
    ASH,
    PRESETS,
    BrainDecoder,
    BrainEncoder,
    ClassificationHead,
    CrissCrossBlock,
    ModelConfig,
    ReconstructionHead,
    load_braindecode_criss_cross,
    load_decoder,
    load_pretrained,
    save_decoder,
    save_encoder,
)
from brainfm.models.decoder import window_for
from brainfm.signal import SensorSpec, collate_sensors

SFREQ = 200.0
EEG19 = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8", "P7", "P3",
         "Pz", "P4", "P8", "O1", "O2"]
MEG_DIR = "/work/shared/data/meg"


# -- montages ------------------------------------------------------------------------
def _eeg_spec(montage: str, names: list[str] | None = None) -> SensorSpec:
    pos = mne.channels.make_standard_montage(montage).get_positions()["ch_pos"]
    names = names or list(pos)
    loc = np.zeros((len(names), 12))
    loc[:, :3] = [pos[n] for n in names]
    return SensorSpec(names, ["eeg"] * len(names), loc, SFREQ)


def _meg_spec(info: mne.Info) -> SensorSpec:
    picks = mne.pick_types(info, meg=True, ref_meg=False)
    types = [mne.channel_type(info, i) for i in picks]
    loc = np.array([info["chs"][i]["loc"] for i in picks])
    return SensorSpec([info["ch_names"][i] for i in picks], types, loc, SFREQ)


@pytest.fixture(scope="module")
def specs() -> dict[str, SensorSpec]:
    info = mne.io.read_info(f"{MEG_DIR}/neuromag/test_raw.fif", verbose=False)
    kit = mne.io.read_raw_kit(f"{MEG_DIR}/kit/test.sqd", verbose=False).info
    return {
        "eeg19": _eeg_spec("colin27_1005", EEG19),
        "eeg64": _eeg_spec("biosemi64"),
        "neuromag306": _meg_spec(info),
        "kit": _meg_spec(kit),
    }


def make_batch(spec_list: list[SensorSpec], seconds: float = 2.0, seed: int = 0) -> dict:
    """Collated batch of realistic-amplitude noise (uV / fT / fT/cm) for ``spec_list``."""
    g = torch.Generator().manual_seed(seed)
    batch = collate_sensors(spec_list)
    b, c = batch["channel_mask"].shape
    amp = torch.tensor([20.0, 300.0, 50.0, 1.0, 50.0, 50.0, 50.0])[batch["sensor_type"]]
    batch["x"] = torch.randn(b, c, int(seconds * SFREQ), generator=g) * amp[..., None]
    return batch


def encode(model: BrainEncoder, batch: dict, patch_mask=None) -> torch.Tensor:
    return model(batch["x"], batch["sensor_geometry"], batch["sensor_type"],
                 batch["channel_mask"], patch_mask)


@pytest.fixture(scope="module")
def tiny() -> BrainEncoder:
    torch.manual_seed(0)
    return BrainEncoder(ModelConfig.from_name("tiny")).eval()


# -- registry-driven contract --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_and_runs(name, specs):
    cfg = ModelConfig.from_name(name)
    assert cfg.name == name and cfg.patch_size == round(cfg.sfreq * cfg.patch_seconds)
    model = BrainEncoder(cfg)
    spec = specs["eeg19"].pick(range(4)) if name == "base" else specs["eeg19"]
    batch = make_batch([spec], seconds=2 * cfg.patch_seconds)
    out = encode(model, batch)
    assert out.shape == (1, spec.n_channels, 2, cfg.d_model)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        if pname != "tokenizer.mask_token":  # only used with a patch_mask
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_base_preset_is_cbramod_scale():
    cfg = ModelConfig.from_name("base")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff) == (12, 200, 8, 800)
    assert (cfg.sfreq, cfg.patch_size) == (200.0, 200)


@pytest.mark.parametrize("montage", ["eeg19", "eeg64", "neuromag306", "kit", "mixed"])
def test_forward_backward_any_montage(montage, specs):
    torch.manual_seed(0)
    model = BrainEncoder(ModelConfig.from_name("tiny"))
    chosen = ([specs["eeg19"], specs["neuromag306"], specs["kit"], specs["eeg64"]]
              if montage == "mixed" else [specs[montage]] * 2)
    batch = make_batch(chosen)
    out = encode(model, batch)
    mask = batch["channel_mask"]
    assert out.shape == (*mask.shape, 2, 32) and torch.isfinite(out).all()
    assert (out[~mask] == 0).all()
    head = ReconstructionHead(32, 200)
    head(out).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_never_leaks(tiny, specs):
    alone = make_batch([specs["eeg19"]], seed=1)
    padded = make_batch([specs["eeg19"], specs["neuromag306"]], seed=2)
    padded["x"][0, :19] = alone["x"][0]
    # garbage in padded slots: huge values, NaN geometry, out-of-range types
    padded["x"][0, 19:] = 1e6
    padded["sensor_geometry"][0, 19:] = float("nan")
    padded["sensor_type"][0, 19:] = 99
    pm = torch.zeros(2, 306, 2, dtype=torch.bool)
    pm[0, :19, 1] = True
    pm[0, 19:, :] = True  # masking padded patches must not matter either
    with torch.no_grad():
        ref = encode(tiny, alone, pm[:1, :19])
        out = encode(tiny, padded, pm)
    torch.testing.assert_close(out[0, :19], ref[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_channel_permutation_equivariance(tiny, specs):
    batch = make_batch([specs["neuromag306"].pick(range(40))])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    permuted = {k: v[:, perm] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(encode(tiny, permuted), encode(tiny, batch)[:, perm],
                                   atol=1e-5, rtol=1e-5)


def test_any_window_up_to_max_patches(tiny, specs):
    spec = specs["eeg19"].pick(range(3))
    for seconds in (1, 7, tiny.config.max_patches):
        assert encode(tiny, make_batch([spec], seconds=seconds)).shape[2] == seconds


def test_patch_mask_uses_mask_token(tiny, specs):
    batch = make_batch([specs["eeg19"]])
    pm = torch.zeros(1, 19, 2, dtype=torch.bool)
    pm[0, 3, 0] = True
    other = dict(batch, x=batch["x"].clone())
    other["x"][0, 3, :200] = 123.0  # content of a masked patch is invisible
    with torch.no_grad():
        torch.testing.assert_close(encode(tiny, batch, pm), encode(tiny, other, pm))
        assert not torch.allclose(encode(tiny, batch), encode(tiny, other))


@pytest.mark.parametrize("activation", ["silu", "ash"])
def test_activation_selectable_everywhere(activation, specs):
    model = BrainEncoder(ModelConfig.from_name("tiny", activation=activation))
    n_ash = sum(isinstance(m, ASH) for m in model.modules())
    # per block 1 (FFN) + 3 patch-embedding convs + 1 sensor MLP
    assert n_ash == (model.config.n_layers + 4 if activation == "ash" else 0)
    out = encode(model, make_batch([specs["kit"]]))
    out.sum().backward()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("overrides", [{"split_attention": False},
                                       {"attn_dropout": 0.1, "dropout": 0.1}])
def test_block_variants_train(overrides, specs):
    model = BrainEncoder(ModelConfig.from_name("tiny", **overrides)).train()
    out = encode(model, make_batch([specs["eeg19"], specs["kit"]]))
    out.square().mean().backward()
    assert out.shape == (2, 157, 2, 32) and torch.isfinite(out).all()


# -- parity with braindecode -----------------------------------------------------------
def _braindecode_layer() -> type:
    """braindecode's layer class, imported with third-party import-time warnings silenced.

    Importing braindecode pulls in wfdb, which warns (pandas Pandas4Warning) at import,
    and MNE's deprecated 'standard_1020' montage; neither concerns our code.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from braindecode.modules import CrissCrossTransformerEncoderLayer
    return CrissCrossTransformerEncoderLayer


@pytest.mark.parametrize("d_model,n_heads,d_ff", [(32, 4, 64), (200, 8, 800)])
def test_parity_with_braindecode_criss_cross(d_model, n_heads, d_ff):
    CrissCrossTransformerEncoderLayer = _braindecode_layer()
    torch.manual_seed(0)
    bd = CrissCrossTransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0,
                                           batch_first=True, norm_first=True).eval()
    cfg = ModelConfig.from_name("tiny", d_model=d_model, n_heads=n_heads, d_ff=d_ff)
    block = load_braindecode_criss_cross(CrissCrossBlock(cfg), bd).eval()
    x = torch.randn(2, 19, 5, d_model)
    with torch.no_grad():
        torch.testing.assert_close(block(x), bd(x), atol=1e-5, rtol=1e-5)


def test_braindecode_loader_rejects_mismatch():
    CrissCrossTransformerEncoderLayer = _braindecode_layer()
    bd = CrissCrossTransformerEncoderLayer(64, 4, 128, batch_first=True)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_braindecode_criss_cross(CrissCrossBlock(ModelConfig.from_name("tiny")), bd)
    with pytest.raises(ValueError, match="split_attention=True"):
        load_braindecode_criss_cross(
            CrissCrossBlock(ModelConfig.from_name("tiny", split_attention=False)), bd)


# -- serialisation -------------------------------------------------------------------
def test_safetensors_round_trip(tmp_path, specs):
    cfg = ModelConfig.from_name("tiny", activation="ash")
    model = BrainEncoder(cfg).eval()
    path = tmp_path / "enc.safetensors"
    save_encoder(model, path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "brainfm-encoder"
    loaded = load_pretrained(path)
    assert loaded.config == cfg
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    batch = make_batch([specs["kit"]])
    with torch.no_grad():
        torch.testing.assert_close(encode(loaded, batch), encode(model, batch))


def test_decoder_records_its_training_window(tmp_path):
    """``window_s`` travels with the decoder file; a bad value is refused; :func:`window_for` prefers what
    the user asks, warns when it differs from the training window, and falls back to the default."""
    decoder = BrainDecoder(ModelConfig.from_name("tiny"), 2, window_s=10)
    save_decoder(decoder, tmp_path / "d.safetensors")
    assert load_decoder(tmp_path / "d.safetensors").window_s == 10.0
    for bad in (0, -1.0, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="window_s must be a length in s > 0"):
            BrainDecoder(ModelConfig.from_name("tiny"), 2, window_s=bad)
    assert window_for(10.0, None, 4.0) == 10.0 and window_for(None, None, 4.0) == 4.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert window_for(10.0, 10.0, 4.0) == 10.0 and window_for(None, 3.0, 4.0) == 3.0
    with pytest.warns(UserWarning, match="trained on 10-s windows; running it on 4-s windows"):
        assert window_for(10.0, 4.0, 5.0) == 4.0


def test_decoder_file_versions(tmp_path):
    """A version-1 decoder file (before ``window_s``) still loads, with no window; a version this brainfm
    does not know is refused with a message that names the file and says to upgrade, not a ``TypeError``
    about a metadata key."""
    path = tmp_path / "d.safetensors"
    save_decoder(BrainDecoder(ModelConfig.from_name("tiny"), 2, window_s=10), path)
    with safe_open(path, framework="pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format_version"] == "2"
    old = json.loads(meta["decoder"])
    del old["window_s"]
    save_file(state, tmp_path / "v1.safetensors", metadata={**meta, "format_version": "1", "decoder": json.dumps(old)})
    assert load_decoder(tmp_path / "v1.safetensors").window_s is None
    save_file(state, tmp_path / "v9.safetensors", metadata={**meta, "format_version": "9"})
    with pytest.raises(ValueError, match=r"v9.safetensors is brainfm-decoder format version 9; this brainfm reads "
                                         r"version 1 or 2 \(a newer brainfm wrote the file: upgrade brainfm"):
        load_decoder(tmp_path / "v9.safetensors")


def test_config_dict_round_trip():
    for cfg in PRESETS.values():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"n_layer": 3})


# -- heads ---------------------------------------------------------------------------
def test_classification_head_pools_real_channels_only():
    head = ClassificationHead(8, 3)
    tokens = torch.randn(2, 5, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    garbage = tokens.clone()
    garbage[0, 3:] = 1e3
    torch.testing.assert_close(head(garbage, mask), head(tokens, mask))
    assert head(tokens, mask).shape == (2, 3)


# -- errors --------------------------------------------------------------------------
def test_config_validation():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="n_heads must be even"):
        ModelConfig.from_name("tiny", n_heads=3, d_model=33)
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig.from_name("tiny", n_heads=6)
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        ModelConfig.from_name("tiny", activation="relu")
    with pytest.raises(ValueError, match=r"attn_dropout must be in \[0, 1\)"):
        ModelConfig.from_name("tiny", attn_dropout=1.5)
    with pytest.raises(ValueError, match="whole number of samples"):
        ModelConfig.from_name("tiny", patch_seconds=0.1234)


def test_for_signal(specs):
    cfg = ModelConfig.from_name("tiny")
    assert cfg.for_signal(specs["neuromag306"], 4.0) is cfg
    spec250 = SensorSpec(EEG19[:2], ["eeg", "eeg"], np.zeros((2, 12)), 250.0)
    with pytest.raises(ValueError, match="sampling rate 250 Hz does not match the model's 200 Hz"):
        cfg.for_signal(spec250, 4.0)
    with pytest.raises(ValueError, match="shorter than one patch"):
        cfg.for_signal(specs["eeg19"], 0.5)
    with pytest.raises(ValueError, match="not a multiple of the 200-sample patch"):
        cfg.for_signal(specs["eeg19"], 2.5)
    with pytest.raises(ValueError, match="exceeds max_patches"):
        cfg.for_signal(specs["eeg19"], 1000.0)
    loc = np.zeros((2, 12))
    loc[1, :3] = np.nan
    with pytest.raises(ValueError, match=r"without a position.*\['Fp2'\]"):
        cfg.for_signal(SensorSpec(EEG19[:2], ["eeg", "eeg"], loc, SFREQ), 4.0)


def test_encoder_errors_name_channels(tiny, specs):
    batch = make_batch([specs["eeg19"], specs["eeg19"]])
    bad = dict(batch, sensor_geometry=batch["sensor_geometry"].clone())
    bad["sensor_geometry"][1, 7, 0] = float("nan")
    with pytest.raises(ValueError, match=r"finite position.*\(sample 1, channel 7\)"):
        encode(tiny, bad)
    bad = dict(batch, sensor_type=batch["sensor_type"].clone())
    bad["sensor_type"][0, 4] = 12
    with pytest.raises(ValueError, match=r"unknown channel type index at \(sample 0, channel 4\)"):
        encode(tiny, bad)
    with pytest.raises(ValueError, match="shorter than one patch"):
        encode(tiny, dict(batch, x=batch["x"][..., :150]))
    with pytest.raises(ValueError, match="not a multiple of the 200-sample patch; crop it to 200"):
        encode(tiny, dict(batch, x=batch["x"][..., :350]))
    with pytest.raises(ValueError, match="no real channel"):
        encode(tiny, dict(batch, channel_mask=torch.zeros(2, 19, dtype=torch.bool)))
    with pytest.raises(ValueError, match="sensor_geometry must have shape"):
        encode(tiny, dict(batch, sensor_geometry=batch["sensor_geometry"][..., :3]))
