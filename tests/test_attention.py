"""brainfm.attention on real recordings: indices, quality gate, states, HMM, detector, ``brainfm detect``.

Labelled checks use EEGMAT (rest vs arithmetic), EEGMMIDB S001 (R02 eyes closed vs R01 eyes
open) and the YASA sleep snippets (N2/N3 vs resting eyes open), under the data root.
"""

from __future__ import annotations

import csv
import json
import warnings

import mne
import numpy as np
import pytest
import torch

from brainfm.attention import (CALIBRATING, SIGNAL_BAD, AttentionDetector, CausalChain, DetectorConfig,
                               EngagementModel, HmmSmoother, StateModel, Windower, assess, attention_guard,
                               detect_signal, read_session, window_indices, zero_phase)
from brainfm.attention.montage import canonical_name
from brainfm.cli import main
from brainfm.data.store import ShardStore
from brainfm.models import BrainDecoder, ModelConfig, load_decoder, save_decoder


@pytest.fixture(scope="module")
def eegmat32(shared_data):
    """Subject 32 (a CBraMod test subject): rest then arithmetic, joined as one session."""
    return read_session([str(shared_data / f"eegmat/Subject32_{k}.edf") for k in (1, 2)])


def _eegbci(shared_data, run: int) -> str:
    return str(shared_data / f"eegbci/MNE-eegbci-data/files/eegmmidb/1.0.0/S001/S001R{run:02d}.edf")


def test_channel_mapping():
    assert [canonical_name(n) for n in ("EEG Fp1", "EEG T3", "Cz-REF", "Fc5.", "EEG A2-A1", "T6")] == \
        ["Fp1", "T7", "Cz", "Fc5", "A2-A1", "P8"]


def test_session_reads_eegmat_with_the_documented_mapping(eegmat32):
    assert eegmat32.spec.n_channels == 19 and "T7" in eegmat32.spec.ch_names
    assert set(eegmat32.dropped) == {"EEG A2-A1", "ECG ECG"} or "EEG A2-A1" in eegmat32.dropped
    assert [s[0] for s in eegmat32.segments] == ["Subject32_1.edf", "Subject32_2.edf"]
    assert 5 < np.median(eegmat32.signal.std(axis=1)) < 100  # µV


def test_live_positions_are_those_the_store_holds(eegmat32, small_sample):
    """The live path maps names to the positions `brainfm convert` stored for the same file (MNE's
    head frame), not the montage template's own frame (4.6 cm off at Fp1 before the fix)."""
    store = ShardStore(str(small_sample[1]))
    rid = next(r for r in store.recording_ids if store.entry(r)["subject"] == "eegmat32")
    stored = store.recording(rid).spec
    for name, loc in zip(eegmat32.spec.ch_names, eegmat32.spec.loc):
        k = [canonical_name(n) for n in stored.ch_names].index(name)
        np.testing.assert_allclose(loc[:3], stored.loc[k, :3], atol=1e-6, err_msg=name)


def test_eyes_closed_raises_posterior_alpha(shared_data):
    """EEGMMIDB S001: R02 (eyes-closed baseline) has more posterior α than the eyes-open task runs
    R03 and R04 (R01, the eyes-open baseline, is not in the data root)."""
    values = {}
    for run in (2, 3, 4):
        session = read_session([_eegbci(shared_data, run)])
        x = zero_phase(session.signal, session.spec.sfreq)
        n = int(4 * session.spec.sfreq)
        windows = torch.from_numpy(np.stack([x[:, i:i + n] for i in range(0, x.shape[1] - n, n)]))  # (B, C, T)
        geometry = torch.from_numpy(session.spec.geometry())[None].expand(len(windows), -1, -1)
        values[run] = window_indices(windows, session.spec.sfreq, geometry)["posterior_alpha"].numpy()
    assert np.median(values[2]) > 1.5 * max(np.median(values[3]), np.median(values[4]))


def test_sleep_is_slower_than_rest(shared_data):
    """Slowing (δ+θ)/(α+β) and δ/β (the arousal axis) of N2 and N3 snippets against resting
    eyes-open EEG, 4-s windows."""
    def indices(x: np.ndarray, sfreq: float) -> dict[str, np.ndarray]:
        n = int(4 * sfreq)
        w = torch.from_numpy(np.stack([x[:, i:i + n] for i in range(0, x.shape[1] - n + 1, n)]))  # (B, C, T)
        return {k: v.numpy() for k, v in window_indices(w, sfreq).items()}

    rest = mne.io.read_raw_fif(shared_data / "sleep/data_resting_EO_200Hz_raw.fif", preload=True, verbose="error")
    awake = indices(zero_phase(rest.get_data() * 1e6, 200.0), 200.0)
    for name, sfreq in (("data_N2_spindles_15sec_200Hz.txt", 200.0), ("data_N3_no-spindles_30sec_100Hz.txt", 100.0)):
        asleep = indices(zero_phase(np.loadtxt(shared_data / "sleep" / name)[None], sfreq), sfreq)
        for key in ("slowing", "delta_beta"):
            assert asleep[key].min() > np.percentile(awake[key], 90), (name, key)


def test_quality_gate_on_real_signal(eegmat32):
    x, sfreq, names = eegmat32.signal[:, :2000].copy(), eegmat32.spec.sfreq, eegmat32.spec.ch_names
    assert assess(x, sfreq, names).ok
    flat = x.copy()
    flat[:12] = 3.0
    q = assess(flat, sfreq, names)
    assert not q.ok and "flat" in q.reasons
    clipped = x.copy()
    clipped[0] = np.clip(clipped[0], -2, 2)
    q = assess(clipped, sfreq, names)
    assert q.ok and q.bad_channels == ("Fp1",) and "clipped" in q.reasons
    hum = x + 80 * np.sin(2 * np.pi * 50 * np.arange(x.shape[1]) / sfreq)
    assert "line-noise" in assess(hum, sfreq, names).reasons
    nan = x.copy()
    nan[3, 100:140] = np.nan
    assert assess(nan, sfreq, names).reasons == ("nan",)


def test_causal_chain_is_chunk_invariant_and_survives_nan(eegmat32):
    x = eegmat32.signal[:, :5000]
    whole = CausalChain(500.0, 19).process(x)
    chain = CausalChain(500.0, 19)
    parts = np.concatenate([chain.process(x[:, i:i + 37]) for i in range(0, 5000, 37)], axis=1)
    np.testing.assert_allclose(parts, whole, atol=1e-9)
    bad = x.copy()
    bad[:, 1000:1100] = np.nan
    assert np.isfinite(CausalChain(500.0, 19).process(bad)).all()


def test_windower_is_chunk_invariant():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1000))
    once = [(w.copy(), e) for w, e in Windower(3, 200, 50, planes=1).feed(x)]
    win = Windower(3, 200, 50, planes=1)
    chunked = [(w.copy(), e) for i in range(0, 1000, 23) for w, e in win.feed(x[:, i:i + 23])]
    assert [e for _, e in once] == [e for _, e in chunked] == list(range(200, 1001, 50))
    for (a, _), (b, _) in zip(once, chunked):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(once[-1][0][0], x[:, 800:])


def test_state_model_regions_and_config(tmp_path):
    model = attention_guard()
    assert model.names[int(np.argmax(model.probabilities(1.5, 0.0)))] == "Focused"
    assert model.names[int(np.argmax(model.probabilities(-1.0, 0.0)))] == "Drifting"
    assert model.names[int(np.argmax(model.probabilities(4.0, 0.0)))] == "Hyperfocused"
    assert model.names[int(np.argmax(model.probabilities(1.5, -3.0)))] == "Fatigued"
    assert np.isclose(model.probabilities(0.3, 0.2).sum(), 1.0)
    path = tmp_path / "states.json"
    path.write_text(json.dumps({"states": [{"name": "low", "engagement": [None, 0]},
                                           {"name": "high", "engagement": [0, None]}]}))
    two = StateModel.from_file(path)
    assert two.names == ("low", "high") and two.probabilities(2.0, 0.0)[1] > 0.99
    path.write_text(json.dumps({"states": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="states.json"):
        StateModel.from_file(path)


def test_hmm_dwell_and_hysteresis():
    hmm = HmmSmoother(2, stay=0.9, min_dwell=4, hysteresis=0.1)
    a, b = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    reported = [hmm.step(p)[1] for p in [a] * 10 + [b] + [a] * 5]
    assert set(reported) == {0}  # a one-window blip never switches
    reported = [hmm.step(p)[1] for p in [b] * 12]
    first = reported.index(1)
    assert 4 <= first <= 8 and all(r == 1 for r in reported[first:])


def test_detector_timeline_on_eegmat(eegmat32):
    config = DetectorConfig(calibration_s=30.0)
    outputs = list(detect_signal(eegmat32.signal, eegmat32.spec, config))
    assert len(outputs) == int((eegmat32.signal.shape[1] / 500 - 4) / 0.5) + 1
    assert all(o.state == CALIBRATING for o in outputs[:60]) and outputs[61].state != CALIBRATING
    o = outputs[100]
    assert set(o.probabilities) == set(config.states.names) and np.isclose(sum(o.probabilities.values()), 1)
    assert set(o.indices) >= {"engagement", "theta_beta", "frontal_theta", "slowing"} and o.quality["ok"]
    bad = eegmat32.signal.copy()
    bad[:, 100_000:101_000] = np.nan  # 2 s of dropped packets
    marked = [o for o in detect_signal(bad, eegmat32.spec, config) if o.state == SIGNAL_BAD]
    assert marked and all(o.quality["reasons"] == ["nan"] for o in marked)
    assert all(100_000 < o.sample < 101_000 + 2000 + 250 for o in marked)


@pytest.fixture(scope="module")
def decoder_file(tmp_path_factory):
    """A tiny decoder in the brainfm-decoder format (seeded, untrained: the runtime is what is tested)."""
    torch.manual_seed(0)
    decoder = BrainDecoder(ModelConfig.from_name("tiny"), n_classes=2, classes=["rest", "arithmetic"]).eval()
    path = tmp_path_factory.mktemp("attention") / "decoder.safetensors"
    save_decoder(decoder, path)
    return path


def test_detector_with_decoder_axis(eegmat32, decoder_file):
    model = EngagementModel(decoder_file)
    assert model.engaged == 1 and model.kind == "fp32"
    config = DetectorConfig(calibration_s=10.0)
    n = int(40 * 500)
    outputs = list(detect_signal(eegmat32.signal[:, :n], eegmat32.spec, config, model))
    assert outputs[-1].decoder is not None and outputs[-1].state in config.states.names


def test_detector_warns_on_a_window_other_than_the_decoders(eegmat32, decoder_file, tmp_path):
    """A decoder that records its training window: a detector on other windows says so; on the same, not."""
    decoder = load_decoder(decoder_file)
    decoder.window_s = 5.0
    save_decoder(decoder, tmp_path / "five.safetensors")
    model = EngagementModel(tmp_path / "five.safetensors")
    assert model.window_s == 5.0
    with pytest.warns(UserWarning, match="trained on 5-s windows; running it on 4-s windows"):
        AttentionDetector(eegmat32.spec, DetectorConfig(window_s=4.0), model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AttentionDetector(eegmat32.spec, DetectorConfig(window_s=5.0), model)


def test_detect_cli_writes_timeline_and_plot(eegmat32, shared_data, tmp_path):
    files = [str(shared_data / f"eegmat/Subject32_{k}.edf") for k in (1, 2)]
    out = tmp_path / "detect"
    assert main(["detect", *files, "--out", str(out), "--calibration-s", "30", "--no-progress"]) == 0
    lines = (out / "timeline.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(header) == len(set(header)) and {"engagement", "engagement_axis", "arousal_axis"} <= set(header)
    rows = list(csv.DictReader(lines))
    doc = json.loads((out / "timeline.json").read_text())
    assert len(rows) == len(doc["windows"]) > 400 and rows[0]["state"] == CALIBRATING
    assert doc["meta"]["segments"][1][0] == "Subject32_2.edf" and doc["meta"]["chain"] == "zero-phase"
    assert (out / "timeline.png").stat().st_size > 10_000


def test_detect_cli_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "not-eeg.edf"
    bad.write_text("hello")
    assert main(["detect", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "not-eeg.edf" in capsys.readouterr().err


def test_stream_cli_errors_name_the_stream(capsys):
    assert main(["stream", "--source", "lsl:brainfm-no-such-stream", "--connect-timeout", "1"]) == 1
    assert "brainfm-no-such-stream" in capsys.readouterr().err
    assert main(["stream", "--source", "EEG"]) == 1
    assert "lsl:NAME" in capsys.readouterr().err


def test_stats_half_life_needs_a_normalising_decoder(eegmat32, decoder_file, tmp_path, capsys):
    """`--stats-half-life` moves a decoder's input statistics: without --model it is refused, and a
    detector whose decoder has no input normalisation says it does nothing."""
    assert main(["detect", str(tmp_path / "x.edf"), "--stats-half-life", "60", "--out", str(tmp_path / "o")]) == 2
    assert "--stats-half-life sets how the decoder's input statistics follow the signal: it needs --model" in \
        capsys.readouterr().err
    with pytest.warns(UserWarning, match="stats_half_life_s has no effect"):
        AttentionDetector(eegmat32.spec, DetectorConfig(stats_half_life_s=60.0), EngagementModel(decoder_file))
