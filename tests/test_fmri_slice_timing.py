"""Slice-timing correction of BIDS ``func`` runs, on the real nitime NIfTI (``fmri1.nii.gz``).

The sidecars here declare an interleaved acquisition of nitime's 18 slices (the files carry no
slice timing of their own), so the stored BOLD can be checked against an independent numpy
reference: a per-slice loop with the full complex FFT (the library uses a vectorised real FFT),
followed by the cleaning reference of ``tests/test_fmri.py``.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from brainfm.data.root import data_root
from brainfm.data.store import FP16_MAX_REL_ERROR, ShardStore
from brainfm.pipelines import bold
from brainfm.pipelines.convert import convert

FMRI = data_root() / "fmri"
TR = 1.35
#: Interleaved ascending (odd slices first), 18 slices over one TR.
ORDER = np.r_[np.arange(0, 18, 2), np.arange(1, 18, 2)]
TIMES = np.empty(18)
TIMES[ORDER] = np.arange(18) * TR / 18


def _reference_stc(data: np.ndarray, times: np.ndarray, tr: float, axis: int) -> np.ndarray:
    """Independent reference: each slice's series mirror-extended, shifted by a full complex
    FFT phase ramp to the middle of the acquisition range, real part."""
    ref = (times.min() + times.max()) / 2
    out = np.empty(data.shape)
    n = data.shape[-1]
    freqs = np.fft.fftfreq(2 * n)
    for s in range(data.shape[axis]):
        index = [slice(None)] * 4
        index[axis] = s
        x = data[tuple(index)].astype(np.float64)  # (a, b, T)
        ext = np.concatenate([x, x[..., ::-1]], axis=-1)
        shift = np.exp(2j * np.pi * freqs * (ref - times[s]) / tr)
        out[tuple(index)] = np.fft.ifft(np.fft.fft(ext, axis=-1) * shift, axis=-1).real[..., :n]
    return out


def _reference_clean(series: np.ndarray, regressors: dict) -> np.ndarray:
    n = series.shape[1]
    t = np.linspace(-1, 1, n)
    cols = [t**p for p in range(regressors["detrend"] + 1)]
    cols += [np.cos(np.pi * (2 * np.arange(n) + 1) * k / (2 * n)) for k in range(1, regressors["n_cosines"] + 1)]
    x = np.stack(cols, axis=1)
    resid = series - (x @ np.linalg.pinv(x) @ series.T).T  # (C, T)
    return 100 * resid / series.mean(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stc")
    root = tmp / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "stc", "BIDSVersion": "1.9.0"}))
    sidecars = {
        "sec": {"SliceTiming": TIMES.tolist()},
        "msec": {"SliceTiming": (TIMES * 1000).tolist()},
        "reversed": {"SliceTiming": TIMES[::-1].tolist(), "SliceEncodingDirection": "k-"},
        "badlength": {"SliceTiming": TIMES[:10].tolist()},
        "done": {"SliceTiming": TIMES.tolist(), "SliceTimingCorrected": True},
    }
    for sub, extra in sidecars.items():
        func = root / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        (func / f"sub-{sub}_task-rest_bold.nii.gz").write_bytes((FMRI / "fmri1.nii.gz").read_bytes())
        (func / f"sub-{sub}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": TR, **extra}))
    report = convert(root, tmp / "store", "fmri-voxel", workers=1, progress=False)
    assert report.ok, report.failed
    return ShardStore(tmp / "store")


def test_stored_bold_equals_a_numpy_slice_timing_reference(converted):
    rec = converted.recording("sub-sec_task-rest_bold")
    stc = converted.entry(rec.id)["bold"]["slice_timing"]
    assert stc == {"corrected": True, "method": "fourier (mirror-extended)", "axis": "k",
                   "reference_s": pytest.approx(17 * TR / 18 / 2), "n_slices": 18, "source_unit": "s"}
    assert rec.attrs["bold"]["slice_timing_corrected"] and rec.attrs["bold"]["slice_timing"] == TIMES.tolist()
    data = np.asarray(nib.load(FMRI / "fmri1.nii.gz").dataobj, dtype=np.float64)
    shifted = _reference_stc(data, TIMES, TR, axis=2)
    ijk = np.array([[int(v) for v in n[1:].split("-")] for n in rec.spec.ch_names])
    expected = _reference_clean(shifted[tuple(ijk.T)], rec.attrs["bold"]["regressors"])  # (C, T)
    got = rec.read_all()
    tol = FP16_MAX_REL_ERROR * np.abs(expected) + 2.0**-24 * rec.scale[:, None] + 1e-9
    assert (np.abs(got - expected) <= tol * 1.001).all()
    uncorrected = _reference_clean(data[tuple(ijk.T)], rec.attrs["bold"]["regressors"])
    assert np.abs(got - uncorrected).max() > 100 * tol.max()  # the correction did something


def test_slice_timing_quirks_are_handled_and_recorded(converted):
    sec = converted.recording("sub-sec_task-rest_bold").read_all()
    msec = converted.recording("sub-msec_task-rest_bold")
    assert any("read as milliseconds" in w for w in msec.warnings)
    assert converted.entry(msec.id)["bold"]["slice_timing"]["source_unit"] == "ms"
    np.testing.assert_allclose(msec.read_all(), sec, rtol=0, atol=1e-6)
    reverse = converted.recording("sub-reversed_task-rest_bold")  # k-: the list runs from the top slice
    np.testing.assert_allclose(reverse.read_all(), sec, rtol=0, atol=1e-6)
    bad = converted.recording("sub-badlength_task-rest_bold")
    assert converted.entry(bad.id)["bold"]["slice_timing"] == {
        "corrected": False, "reason": "SliceTiming has 10 entries for 18 slices along k"}
    assert any("slice timing not corrected" in w for w in bad.warnings)
    done = converted.entry("sub-done_task-rest_bold")["bold"]["slice_timing"]
    assert done["corrected"] is False and "SliceTimingCorrected" in done["reason"]


def test_fourier_shift_recovers_a_delayed_sinusoid():
    """Maths only (synthetic): a slow sinusoid sampled late by ``t_s`` is moved to the reference."""
    n, tr = 64, 2.0
    times = np.array([0.0, 0.5, 1.0, 1.5])
    t = np.arange(n) * tr
    f = 1 / 40.0  # Hz, well below Nyquist (0.25 Hz)
    data = np.stack([np.sin(2 * np.pi * f * (t + ts)) for ts in times])[None, None]  # (1, 1, 4, T)
    out = bold.slice_time_correct(data, times, tr, axis=2)
    ref = bold.slice_reference(times)
    want = np.sin(2 * np.pi * f * (t + ref))
    interior = slice(8, n - 8)  # the mirror extension bends the edges
    for s in range(4):
        np.testing.assert_allclose(out[0, 0, s, interior], want[interior], atol=0.02)
    np.testing.assert_allclose(bold.slice_time_correct(data, np.zeros(4), tr, axis=2), data, atol=1e-12)
