"""Neurodynamics targets (:mod:`brainfm.targets`) against MNE, mne-connectivity, antropy and
the numpy references of :mod:`brainfm.targets.reference`, on real EEGMAT windows.

Windows: Subject00_1 of EEGMAT, the 19 10-20 EEG channels, resampled to 200 Hz, in µV,
three 5-s windows (B=3, C=19, T=1000). Tolerances, all float32 unless stated:

* Welch PSD vs ``mne.time_frequency.psd_array_welch``: rtol 1e-4 on 1-45 Hz bins (float32;
  above ~60 Hz the resampled data have ~1e-9 of the peak power, below float32 resolution),
  rtol 1e-8 on every bin for float64 input; relative band power rtol 1e-4.
* PLV vs :func:`~brainfm.targets.reference.plv_reference`: abs 1e-4. Against
  ``mne_connectivity.spectral_connectivity_time`` (multitaper, band-averaged), which
  estimates a related but different quantity: Spearman rank correlation over the 171
  pairs, per band from theta to gamma, > 0.9 on average over the windows and > 0.85 in
  each (observed 0.87-0.99). Delta (1-4 Hz: 4-20 cycles per window, where the two
  estimators' edge handling dominates) gives 0.5-0.7 and is not checked.
* Sample entropy vs ``antropy.sample_entropy``: abs 1e-3 in float32 (observed ~2e-5),
  1e-9 in float64. Hjorth vs ``antropy.hjorth_params``: rtol 1e-4.
* Modulation index vs :func:`~brainfm.targets.reference.modulation_index_reference`: abs 1e-5
  (values are 4e-5 to 7e-3 on these windows).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainfm.targets import (DEFAULT_BANDS, Bands, TargetNormalizer, TargetSpec, compute_targets, hjorth_params,
                             modulation_index, phase_locking_value, plv_summary, relative_band_power,
                             sample_entropy, target_names, welch_psd)
from brainfm.targets.reference import modulation_index_reference, plv_reference

SFREQ = 200.0


@pytest.fixture(scope="module")
def eeg(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """(windows (3, 19, 1000) float32 µV, geometry (19, 6) head coordinates) from EEGMAT."""
    import mne

    raw = mne.io.read_raw_edf(shared_data / "eegmat" / "Subject00_1.edf", preload=True, verbose="error")
    raw.pick([c for c in raw.ch_names if c.startswith("EEG ") and c != "EEG A2-A1"])
    raw.rename_channels(lambda name: name.removeprefix("EEG "))
    raw.set_montage(mne.channels.make_standard_montage("colin27_1005"), verbose="error")
    raw.resample(SFREQ, verbose="error")
    data = raw.get_data() * 1e6
    x = np.stack([data[:, s : s + 1000] for s in (2000, 9000, 16000)]).astype(np.float32)  # (3, 19, 1000)
    geom = np.zeros((19, 6))
    geom[:, :3] = np.stack([ch["loc"][:3] for ch in raw.info["chs"]])
    return x, geom


# --- spectral -------------------------------------------------------------------------


@pytest.mark.parametrize("n_fft, n_overlap, window", [(400, 200, "hann"), (256, 0, "hamming")])
def test_welch_matches_mne(eeg, n_fft, n_overlap, window):
    from mne.time_frequency import psd_array_welch

    x, _ = eeg
    ref, ref_freqs = psd_array_welch(x.astype(np.float64), SFREQ, n_fft=n_fft, n_overlap=n_overlap,
                                     window=window, verbose="error")
    psd, freqs = welch_psd(torch.from_numpy(x), SFREQ, n_fft=n_fft, n_overlap=n_overlap, window=window)
    assert psd.dtype == torch.float32 and psd.shape == ref.shape
    np.testing.assert_allclose(freqs.numpy(), ref_freqs, rtol=1e-6)
    band = (ref_freqs >= 1) & (ref_freqs < 45)
    np.testing.assert_allclose(psd.numpy()[..., band], ref[..., band], rtol=1e-4)
    psd64, _ = welch_psd(torch.from_numpy(x).double(), SFREQ, n_fft=n_fft, n_overlap=n_overlap, window=window)
    np.testing.assert_allclose(psd64.numpy(), ref, rtol=1e-8)


def test_relative_band_power_matches_mne(eeg):
    from mne.time_frequency import psd_array_welch

    x, _ = eeg
    ref, f = psd_array_welch(x.astype(np.float64), SFREQ, n_fft=400, n_overlap=200, window="hann", verbose="error")
    absolute = np.stack([ref[..., (f >= lo) & (f < hi)].sum(-1) for lo, hi in DEFAULT_BANDS.values()], -1) * 0.5
    expected = absolute / (ref[..., (f >= 1) & (f < 45)].sum(-1, keepdims=True) * 0.5)
    psd, freqs = welch_psd(torch.from_numpy(x), SFREQ, n_fft=400)  # n_overlap defaults to 50 %
    rel = relative_band_power(psd, freqs)
    np.testing.assert_allclose(rel.numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(rel.sum(-1).numpy(), 1.0, rtol=1e-5)  # default bands tile 1-45 Hz


# --- connectivity ---------------------------------------------------------------------


def test_plv_matches_numpy_reference(eeg):
    x, _ = eeg
    plv = phase_locking_value(torch.from_numpy(x), SFREQ)  # (B, nb, C, C)
    assert plv.shape == (3, 5, 19, 19)
    for b, (lo, hi) in enumerate(DEFAULT_BANDS.values()):
        for w in range(x.shape[0]):
            np.testing.assert_allclose(plv[w, b].numpy(), plv_reference(x[w], SFREQ, lo, hi), atol=1e-4)


def test_plv_rank_agrees_with_mne_connectivity(eeg):
    from mne_connectivity import spectral_connectivity_time
    from scipy.stats import spearmanr

    x, _ = eeg
    plv = phase_locking_value(torch.from_numpy(x), SFREQ).numpy()
    lower = np.tril_indices(19, -1)
    for name in ("theta", "alpha", "beta", "gamma"):
        lo, hi = DEFAULT_BANDS[name]
        con = spectral_connectivity_time(x.astype(np.float64), freqs=np.arange(lo, hi, 0.5), method="plv",
                                         sfreq=SFREQ, fmin=lo, fmax=hi, faverage=True, mode="multitaper",
                                         mt_bandwidth=2.0, n_cycles=5, verbose="error")
        dense = con.get_data(output="dense")[..., 0]  # (B, C, C), lower triangle filled
        b = list(DEFAULT_BANDS).index(name)
        rho = [spearmanr(dense[w][lower], plv[w, b][lower]).statistic for w in range(x.shape[0])]
        assert min(rho) > 0.85 and np.mean(rho) > 0.9, (name, rho)


def test_plv_summary_by_hand(eeg):
    x, _ = eeg
    plv = phase_locking_value(torch.from_numpy(x), SFREQ)
    summary = plv_summary(plv)  # (B, nb, 3)
    p = plv[1, 2].double().numpy()
    off = p[~np.eye(19, dtype=bool)]
    strength = (p.sum(1) - 1.0) / 18
    np.testing.assert_allclose(summary[1, 2].numpy(), [off.mean(), off.std(), strength.std()], rtol=1e-5)


# --- coupling -------------------------------------------------------------------------


def test_modulation_index_coupled_vs_uncoupled():
    t = torch.arange(2000) / SFREQ
    gen = torch.Generator().manual_seed(0)
    theta = torch.sin(2 * torch.pi * 6 * t)
    noise = 0.2 * torch.randn(2, 2000, generator=gen)
    coupled = theta + (1 + 0.8 * theta) * 0.5 * torch.sin(2 * torch.pi * 38 * t) + noise[0]
    uncoupled = theta + 0.5 * torch.sin(2 * torch.pi * 38 * t) + noise[1]
    mi = modulation_index(torch.stack([coupled, uncoupled])[None], SFREQ, pairs=(("theta", "gamma"),))
    assert mi.shape == (1, 2, 1)
    assert mi[0, 0, 0] > 0.02 and mi[0, 0, 0] > 20 * mi[0, 1, 0], mi


def test_modulation_index_matches_numpy_reference(eeg):
    x, _ = eeg
    mi = modulation_index(torch.from_numpy(x), SFREQ)  # (B, C, 2): theta-gamma, alpha-gamma
    ref = np.array([[[modulation_index_reference(ch, SFREQ, DEFAULT_BANDS[p], DEFAULT_BANDS["gamma"])
                      for p in ("theta", "alpha")] for ch in win] for win in x])
    np.testing.assert_allclose(mi.numpy(), ref, atol=1e-5)


# --- complexity -----------------------------------------------------------------------


def test_sample_entropy_matches_antropy(eeg):
    import antropy

    x, _ = eeg
    ref = np.array([[antropy.sample_entropy(ch.astype(np.float64)) for ch in win] for win in x])
    np.testing.assert_allclose(sample_entropy(torch.from_numpy(x)).numpy(), ref, atol=1e-3)
    # Small chunks exercise the chunk loop; float64 agrees exactly with antropy's float64.
    se64 = sample_entropy(torch.from_numpy(x).double(), max_elements=2**16)
    np.testing.assert_allclose(se64.numpy(), ref, atol=1e-9)


def test_sample_entropy_edge_cases():
    import antropy

    gen = torch.Generator().manual_seed(1)
    short = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    short[5] = torch.arange(40.0)  # regular ramp: no match at r = 0.2 std, nan like antropy
    ours, ref = sample_entropy(short).numpy(), [antropy.sample_entropy(s.numpy()) for s in short]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_hjorth_matches_antropy(eeg):
    import antropy

    x, _ = eeg
    mob, com = hjorth_params(torch.from_numpy(x), SFREQ)
    ref_mob, ref_com = antropy.hjorth_params(x.astype(np.float64), sf=SFREQ)
    np.testing.assert_allclose(mob.numpy(), ref_mob, rtol=1e-4)
    np.testing.assert_allclose(com.numpy(), ref_com, rtol=1e-4)


# --- target vector --------------------------------------------------------------------


def test_vector_shape_names_dtype_on_double_batch(eeg):
    x, geom = eeg
    xx = torch.from_numpy(np.concatenate([x, x[:, ::-1].copy()]))  # (6, 19, 1000)
    g = torch.from_numpy(np.stack([geom] * 3 + [geom[::-1]] * 3)).float()  # (6, 19, 6)
    out = compute_targets(xx, SFREQ, sensor_geometry=g)
    names = target_names()
    assert out.shape == (6, len(names)) == (6, 33) and out.dtype == torch.float32
    assert len(set(names)) == len(names) and torch.isfinite(out).all()
    np.testing.assert_allclose(out[:3].numpy(), out[3:].numpy(), rtol=1e-4, atol=1e-6)  # channel order
    sub = TargetSpec(features=("relpow", "pac"), pac_pairs=(("theta", "gamma"),))
    assert compute_targets(xx, SFREQ, spec=sub).shape == (6, len(target_names(sub))) == (6, 6)


def test_vector_ignores_padded_channels_and_order(eeg):
    x, geom = eeg
    xt, g = torch.from_numpy(x), torch.from_numpy(geom).float().expand(3, -1, -1)
    mask = torch.ones(3, 19, dtype=torch.bool)
    ref = compute_targets(xt, SFREQ, mask, g)
    # Interleave 7 padded channels holding garbage (huge, nan, inf, zeros) at random slots.
    gen = torch.Generator().manual_seed(0)
    garbage = 1e6 * torch.randn(3, 7, 1000, generator=gen)
    garbage[:, 0, 5] = float("nan")
    garbage[:, 1] = float("inf")
    garbage[:, 2] = 0.0
    order = torch.randperm(26, generator=gen)
    padded_x = torch.cat([xt, garbage], 1)[:, order]
    padded_mask = torch.cat([mask, torch.zeros(3, 7, dtype=torch.bool)], 1)[:, order]
    padded_g = torch.cat([g, torch.full((3, 7, 6), -1.0)], 1)[:, order]  # padding claims to be posterior
    out = compute_targets(padded_x, SFREQ, padded_mask, padded_g)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-6)


def test_posterior_alpha(eeg):
    x, geom = eeg
    xt = torch.from_numpy(x)
    spec = TargetSpec(features=("relpow", "indices"))
    names = target_names(spec)
    psd, freqs = welch_psd(xt, SFREQ, n_fft=400)
    alpha = relative_band_power(psd, freqs)[..., 2]  # (B, C)
    posterior = torch.from_numpy(geom[:, 1] < 0)
    assert 5 <= int(posterior.sum()) < 19
    out = compute_targets(xt, SFREQ, sensor_geometry=torch.from_numpy(geom).expand(3, -1, -1), spec=spec)
    np.testing.assert_allclose(out[:, names.index("posterior_alpha")], alpha[:, posterior].mean(1), rtol=1e-5)
    np.testing.assert_allclose(out[:, names.index("relpow_alpha")], alpha.mean(1), rtol=1e-5)
    frontal = torch.from_numpy(geom).clone()
    frontal[:, 1] = frontal[:, 1].abs() + 0.01  # nobody posterior: falls back to all channels
    frontal[0, 1] = float("nan")  # unknown positions are never posterior
    out = compute_targets(xt, SFREQ, sensor_geometry=frontal.expand(3, -1, -1), spec=spec)
    np.testing.assert_allclose(out[:, names.index("posterior_alpha")], alpha.mean(1), rtol=1e-5)
    rel = out[:, [names.index(f"relpow_{b}") for b in ("theta", "alpha", "beta")]]
    np.testing.assert_allclose(out[:, names.index("theta_beta_ratio")], rel[:, 0] / rel[:, 2], rtol=1e-5)
    np.testing.assert_allclose(out[:, names.index("engagement_index")], rel[:, 2] / (rel[:, 1] + rel[:, 0]),
                               rtol=1e-5)


def test_spec_validation_and_custom_bands():
    with pytest.raises(ValueError, match="subset"):
        TargetSpec(features=("relpow", "fractal"))
    with pytest.raises(ValueError, match="needed"):
        TargetSpec(bands={"alpha": (8, 13)})
    with pytest.raises(ValueError, match="lo < hi"):
        Bands(edges={"x": (10, 5)})
    spec = TargetSpec(features=("relpow", "plv"), bands={"low": (2, 9), "high": (9, 40)})
    assert target_names(spec) == ["relpow_low", "relpow_high", "plv_mean_low", "plv_std_low",
                                  "plv_strength_std_low", "plv_mean_high", "plv_std_high", "plv_strength_std_high"]


def test_normalizer_matches_full_batch_stats():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(50, 4, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 0.0]) + 3.0
    t[7, 1] = float("nan")
    norm = TargetNormalizer(4)
    for chunk in t.split(13):
        norm.update(chunk)
    col1 = t[:, 1][torch.isfinite(t[:, 1])]
    np.testing.assert_allclose(norm.mean[[0, 2, 3]], t[:, [0, 2, 3]].double().mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.mean[1], col1.double().mean(), rtol=1e-6)
    np.testing.assert_allclose(norm.std[:3], [t[:, 0].std(correction=0), col1.std(correction=0),
                                              t[:, 2].std(correction=0)], rtol=1e-5)
    z = norm(t)
    assert z.dtype == torch.float32 and torch.isfinite(z[:, 3]).all()  # constant target -> 0, not inf
    other = TargetNormalizer(4)
    other.load_state_dict(norm.state_dict())
    np.testing.assert_allclose(other.inverse(other(t))[:, [0, 2, 3]], t[:, [0, 2, 3]], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vector_on_cuda_matches_cpu(eeg):
    x, geom = eeg
    g = torch.from_numpy(geom).float().expand(3, -1, -1)
    cpu = compute_targets(torch.from_numpy(x), SFREQ, sensor_geometry=g)
    gpu = compute_targets(torch.from_numpy(x).cuda(), SFREQ, sensor_geometry=g.cuda())
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=1e-3, atol=1e-5)
