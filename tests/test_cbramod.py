"""CBraMod weights in brainfm: parity with braindecode's ``CBraMod``, original ``.pth`` files,
key errors, fine-tuning and reset-tuning (Wang et al., ICLR 2025, arXiv 2412.07236).

Every model is randomly initialised here (fixed seeds); nothing is downloaded.
"""

from __future__ import annotations

import mne
import pytest
import torch

from brainfm.models import load_decoder, save_decoder
from brainfm.models.cbramod import (
    CBraModConfig,
    CBraModEncoder,
    cbramod_decoder,
    load_cbramod_weights,
    save_cbramod_weights,
)
from brainfm.signal import CHANNEL_TYPES

CBraMod = pytest.importorskip("braindecode.models").CBraMod

N_CHANS, N_TIMES = 19, 1000  # 19 EEG channels, 5-s windows at 200 Hz


@pytest.fixture(scope="module")
def eegmat(shared_data) -> torch.Tensor:
    """Two real 5-s EEGMAT windows ``(2, 19, 1000)`` in uV at 200 Hz (MNE resampling)."""
    raw = mne.io.read_raw_edf(shared_data / "eegmat" / "Subject00_1.edf", preload=False, verbose="error")
    raw.crop(30.0, 40.0).load_data(verbose="error")
    raw.pick([n for n in raw.ch_names if n.startswith("EEG ") and "A2-A1" not in n])
    raw.resample(200.0, verbose="error")
    data = torch.from_numpy(raw.get_data()[:, : 2 * N_TIMES] * 1e6).float()  # (19, 2000), uV
    assert data.shape == (N_CHANS, 2 * N_TIMES)
    return data.reshape(N_CHANS, 2, N_TIMES).transpose(0, 1).contiguous()  # (2, 19, 1000)


def _small_cbramod(seed: int = 0) -> torch.nn.Module:
    """braindecode's CBraMod with its real layers and patch embedding, 2 layers deep; a
    ``proj_out`` narrower than ``d_model`` and a classifier head, as a braindecode user has."""
    torch.manual_seed(seed)
    return CBraMod(n_outputs=2, n_chans=N_CHANS, n_times=N_TIMES, n_layer=2, nhead=8,
                   dim_feedforward=256, emb_dim=64).eval()


def _inputs(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    b, c, _ = x.shape
    return (x, torch.zeros(b, c, 6, dtype=x.dtype), torch.zeros(b, c, dtype=torch.long),
            torch.ones(b, c, dtype=torch.bool))


def _sgd_step(params, lr: float = 1e-2) -> None:
    """One plain SGD update (``torch.optim``'s first step imports torch._dynamo: seconds)."""
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad


def _original_state(bd: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as CBraMod's repository saves it (braindecode adds ``final_layer``)."""
    return {k: v.clone() for k, v in bd.state_dict().items() if not k.startswith("final_layer.")}


# -- parity -----------------------------------------------------------------------------
def test_matches_braindecode_on_eegmat(eegmat):
    bd = _small_cbramod()
    with torch.no_grad():
        ref_features = bd(eegmat / 100.0, return_features=True)["features"]  # before final_layer
        ref_tokens = bd.encoder(bd.patch_embedding(bd.rearrange(eegmat / 100.0)))
        features = load_cbramod_weights(bd, use_proj_out=True)(*_inputs(eegmat))
        tokens = load_cbramod_weights(bd)(*_inputs(eegmat))
    assert features.shape == (2, N_CHANS, 5, 64) and tokens.shape == (2, N_CHANS, 5, 200)
    torch.testing.assert_close(features, ref_features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-5)


def test_full_size_is_the_same_function(eegmat):
    """CBraMod's released architecture (12 layers, d=200), in float64: equal to rounding."""
    torch.manual_seed(1)
    bd = CBraMod(return_encoder_output=True).double().eval()
    encoder = load_cbramod_weights(bd, use_proj_out=True).double()
    assert encoder.config == CBraModConfig(use_proj_out=True)
    x = eegmat[:1].double()
    with torch.no_grad():
        torch.testing.assert_close(encoder(*_inputs(x)), bd(x / 100.0), atol=1e-10, rtol=1e-10)


def test_patch_mask_matches_cbramod_masking(eegmat):
    bd = _small_cbramod()
    encoder = load_cbramod_weights(bd)
    mask = torch.rand(2, N_CHANS, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        ref = bd.encoder(bd.patch_embedding(bd.rearrange(eegmat / 100.0), mask.long()))
        out = encoder(*_inputs(eegmat), patch_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_padded_channels_change_nothing(eegmat):
    """Trailing padding (as collate_windows pads) leaves every real token as unpadded."""
    encoder = load_cbramod_weights(_small_cbramod())
    x, geometry, types, mask = _inputs(torch.cat([eegmat, torch.full((2, 3, N_TIMES), float("nan"))], 1))
    mask[:, N_CHANS:] = False
    mask[1, 15:] = False  # sample 1 keeps 15 channels
    with torch.no_grad():
        padded = encoder(x, geometry, types, mask)
        first = encoder(*_inputs(eegmat[:1]))
        second = encoder(*_inputs(eegmat[1:, :15]))
    torch.testing.assert_close(padded[0, :N_CHANS], first[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1, :15], second[0], atol=1e-5, rtol=1e-5)
    assert padded[1, 15:].abs().max() == 0


def test_rejects_what_cbramod_cannot_read(eegmat):
    encoder = load_cbramod_weights(_small_cbramod())
    x, geometry, types, mask = _inputs(eegmat)
    with pytest.raises(ValueError, match="padded channels last"):
        encoder(x, geometry, types, mask.index_fill(1, torch.tensor([3]), False))
    with pytest.raises(ValueError, match="eeg channels only"):
        encoder(x, geometry, types.index_fill(1, torch.tensor([2]), CHANNEL_TYPES.index("mag")), mask)
    with pytest.raises(ValueError, match="multiple of the 200-sample patch"):
        encoder(x[..., :950], geometry, types, mask)


# -- files and keys ----------------------------------------------------------------------
def test_original_pth_round_trip(tmp_path, eegmat):
    bd = _small_cbramod()
    original = _original_state(bd)
    path = tmp_path / "pretrained_weights.pth"
    torch.save({f"module.{k}": v for k, v in original.items()}, path)  # as saved from DataParallel
    encoder = load_cbramod_weights(path)
    assert encoder.config.n_layers == 2 and encoder.config.out_dim == 64 and not encoder.training
    with torch.no_grad():
        ref = bd.encoder(bd.patch_embedding(bd.rearrange(eegmat / 100.0)))
        torch.testing.assert_close(encoder(*_inputs(eegmat)), ref, atol=1e-5, rtol=1e-5)
    out = tmp_path / "exported.pth"
    save_cbramod_weights(encoder, out)
    written = torch.load(out, map_location="cpu", weights_only=True)
    assert set(written) == set(original)
    assert all(torch.equal(written[k], original[k]) for k in original)
    fresh = CBraMod(n_outputs=2, n_chans=N_CHANS, n_times=N_TIMES, n_layer=2, nhead=8,
                    dim_feedforward=256, emb_dim=64)
    result = fresh.load_state_dict(written, strict=False)  # braindecode reads the file too
    assert not result.unexpected_keys and all(k.startswith("final_layer.") for k in result.missing_keys)


def test_key_errors_are_listed():
    state = _original_state(_small_cbramod())
    with pytest.raises(ValueError, match=r"missing keys \['encoder\.layers\.1\.linear2\.bias'\]"):
        load_cbramod_weights({k: v for k, v in state.items() if k != "encoder.layers.1.linear2.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder\.layers\.0\.extra'\]"):
        load_cbramod_weights({**state, "encoder.layers.0.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="wrong shapes.*spectral_proj.0.bias"):
        load_cbramod_weights({**state, "patch_embedding.spectral_proj.0.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="not a CBraMod state dict"):
        load_cbramod_weights({"conv.weight": torch.zeros(2)})
    with pytest.raises(FileNotFoundError):
        load_cbramod_weights("/nonexistent/pretrained_weights.pth")


def test_config_serialises():
    cfg = CBraModConfig(n_layers=2, d_ff=256, out_dim=64, dropout=0.0)
    d = cfg.to_dict()
    assert d["encoder_kind"] == "cbramod" and CBraModConfig.from_dict(d) == cfg
    assert cfg.d_model == 200 and cfg.patch_seconds == 1.0
    with pytest.raises(ValueError, match="unknown CBraModConfig fields"):
        CBraModConfig.from_dict({**d, "sensor_hidden": 8})


# -- fine-tuning and reset-tuning ---------------------------------------------------------
def test_finetune_step_changes_weights(eegmat, tmp_path):
    decoder = cbramod_decoder(load_cbramod_weights(_small_cbramod()), n_classes=2, classes=["rest", "task"])
    assert isinstance(decoder.encoder, CBraModEncoder) and decoder.training
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    loss = torch.nn.functional.cross_entropy(decoder(*_inputs(eegmat)), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is None for p in decoder.encoder.proj_out.parameters())  # not applied
    _sgd_step(p for p in decoder.parameters() if p.requires_grad)
    after = decoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert torch.isfinite(loss)
    assert {"encoder.blocks.0.qkv_s.weight", "encoder.patch_embedding.proj_in.0.weight",
            "encoder.patch_embedding.positional_encoding.0.weight"} <= changed
    assert not any(k.startswith("encoder.proj_out") or k.endswith("mask_encoding") for k in changed)
    # a saved decoder reloads with the CBraMod trunk
    path = tmp_path / "decoder.safetensors"
    save_decoder(decoder, path)
    reloaded = load_decoder(path)
    decoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*_inputs(eegmat)), decoder(*_inputs(eegmat)))
    assert reloaded.classes == ["rest", "task"]


def test_reset_tuning_trains_only_subject_layers(eegmat):
    decoder = cbramod_decoder(load_cbramod_weights(_small_cbramod(), dropout=0.0), n_classes=2)
    decoder.eval()
    shared = {k: v.clone() for k, v in decoder.state_dict().items()}
    with torch.no_grad():
        logits = decoder(*_inputs(eegmat))
    adapter = decoder.subjects.add("sub-new", N_CHANS)
    decoder.requires_grad_(False)
    adapter.requires_grad_(True)
    with torch.no_grad():  # fresh subject layers are the identity
        torch.testing.assert_close(decoder(*_inputs(eegmat), ["sub-new"] * 2), logits)
    loss = torch.nn.functional.cross_entropy(decoder(*_inputs(eegmat), ["sub-new"] * 2), torch.tensor([0, 1]))
    loss.backward()
    frozen = [*decoder.encoder.parameters(), *decoder.head.parameters()]
    assert all(p.grad is None for p in frozen)
    _sgd_step(adapter.parameters())
    after = decoder.state_dict()
    assert all(torch.equal(shared[k], after[k]) for k in shared)
    assert not torch.equal(adapter.mix_delta, torch.zeros_like(adapter.mix_delta))
