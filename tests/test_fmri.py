"""fMRI: BIDS ``func`` conversion of the real NIfTI/CSV files, BOLD as sensors, MindBridge.

The sample (``brainfm.pipelines.fmri_sample``) is built once per module from ``fmri/`` under
the data root; quirk cases are derived from the same real files (a truncated copy, one
volume, NaN voxels, a TR in ms).
"""

from __future__ import annotations

import json

import mne
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from brainfm.data.root import data_root
from brainfm.data.store import FP16_MAX_REL_ERROR, ShardStore
from brainfm.data.store_verify import verify_store
from brainfm.models import ModelConfig
from brainfm.models.encoder import BrainEncoder
from brainfm.models.heads import ReconstructionHead
from brainfm.models.mindbridge import MindBridge, MindBridgeConfig, VoxelAggregation
from brainfm.pipelines import bold
from brainfm.pipelines.convert import convert
from brainfm.pipelines.fmri_sample import build_fmri_sample
from brainfm.signal import SensorSpec
from brainfm.tasks.fmri import hrf
from brainfm.tasks.fmri import (bold_patches, bold_spec_for_model, event_windows, lss_betas,
                                masked_reconstruction, mixed_batch, volumes_of)

FMRI = data_root() / "fmri"
NITIME = "sub-nitime01_task-rest_bold"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    stores, reports = build_fmri_sample(tmp_path_factory.mktemp("fmri") / "fmri")
    assert all(r.ok for r in reports), [r.failed for r in reports]
    return stores, reports


def _reference_clean(series: np.ndarray, tr: float, regressors: dict, confounds: np.ndarray | None = None,
                     units: str = "psc") -> np.ndarray:
    """Independent reference: monomials (not Legendre) and cosines span the same space, so
    the residual must be the same; percent of the pre-cleaning mean."""
    n = series.shape[1]
    t = np.linspace(-1, 1, n)
    cols = [t**p for p in range(regressors["detrend"] + 1)]
    cols += [np.cos(np.pi * (2 * np.arange(n) + 1) * k / (2 * n)) for k in range(1, regressors["n_cosines"] + 1)]
    if confounds is not None:
        cols += list(confounds.T)
    x = np.stack(cols, axis=1)
    resid = series - (x @ np.linalg.pinv(x) @ series.T).T  # (C, T)
    return 100 * resid / series.mean(axis=1, keepdims=True) if units == "psc" else resid


def _fp16_close(stored: np.ndarray, expected: np.ndarray, scale: np.ndarray) -> bool:
    tol = FP16_MAX_REL_ERROR * np.abs(expected) + 2.0**-24 * scale[:, None] + 1e-9
    return bool((np.abs(stored - expected) <= tol * 1.001).all())


def test_sample_converts_every_run_and_records_preprocessing(sample):
    stores, reports = sample
    store = ShardStore(stores["voxel"])
    assert store.recording_ids == sorted([NITIME, "sub-nitime02_task-rest_bold", "sub-example4d_task-quirk_bold",
                                          "sub-nitimeroi_task-rest_atlas-nitime28_timeseries",
                                          "sub-evrel_task-events_atlas-single_timeseries"])
    assert verify_store(stores["voxel"]).ok and verify_store(stores["roi"]).ok
    entry = store.entry(NITIME)
    assert entry["datatype"] == "func" and entry["ch_type_counts"] == {"bold": entry["n_channels"]}
    assert entry["bold"] == {"representation": "voxel", "units": "percent signal change", "tr": 1.35, "space": "scanner",
                             "regressors": {"detrend": 1, "n_cosines": 1, "high_pass": 0.01, "confounds": [],
                                            "confounds_file": None}, "slice_timing": None}
    assert store.preset["kind"] == "fmri" and store.preset["high_pass"] == 0.01
    rec = store.recording(NITIME)
    assert rec.sfreq == pytest.approx(1 / 1.35) and rec.n_samples == 40 and set(rec.spec.units) == {"%"}
    quirk = store.recording("sub-example4d_task-quirk_bold")  # header TR "2000 s"
    assert quirk.sfreq == 0.5 and any("unit is wrong" in w and "2000 ms" in w for w in quirk.warnings)
    assert any("too few" in w for w in quirk.warnings) and quirk.attrs["channels"]["loc"] == {"array": "channel_loc"}
    assert np.isfinite(quirk.spec.positions).all()


def test_stored_bold_equals_nibabel_after_recorded_preprocessing(sample):
    rec = ShardStore(sample[0]["voxel"]).recording(NITIME)
    img = nib.load(FMRI / "fmri1.nii.gz")
    ijk = np.array([[int(v) for v in n[1:].split("-")] for n in rec.spec.ch_names])
    series = np.asarray(img.dataobj, dtype=np.float64)[tuple(ijk.T)]  # (C, T)
    expected = _reference_clean(series, 1.35, rec.attrs["bold"]["regressors"])
    assert _fp16_close(rec.read_all(), expected, rec.scale)
    mask = rec.attrs["bold"]["mask"]
    assert mask["kind"] == "intensity" and mask["n_voxels"] == rec.spec.n_channels
    mean = np.asarray(img.dataobj, dtype=np.float64).mean(-1)
    assert rec.spec.n_channels == int((mean > 0.2 * np.percentile(mean, 98)).sum())


def test_positions_are_the_affine_applied_to_voxel_indices(sample):
    rec = ShardStore(sample[0]["voxel"]).recording(NITIME)
    img = nib.load(FMRI / "fmri1.nii.gz")
    ijk = np.array([[int(v) for v in n[1:].split("-")] for n in rec.spec.ch_names])
    np.testing.assert_allclose(rec.spec.positions * 1000, nib.affines.apply_affine(img.affine, ijk), atol=1e-9)
    np.testing.assert_allclose(rec.attrs["bold"]["affine"], img.affine)


def test_roi_means_equal_a_numpy_reference(sample):
    stores, _ = sample
    rec = ShardStore(stores["roi"]).recording(NITIME)
    bids = stores["roi"].parent / "bids"
    atlas = np.asarray(nib.load(bids / "atlas" / "atlas_dseg.nii.gz").dataobj)
    data = np.asarray(nib.load(FMRI / "fmri1.nii.gz").dataobj, dtype=np.float64)
    labels = rec.attrs["channels"]["label_index"]
    means = np.stack([data[atlas == lab].mean(axis=0) for lab in labels])  # (R, T)
    got, counts = bold.roi_means(data, atlas, np.asarray(labels), np.isfinite(data).all(-1))
    np.testing.assert_allclose(got, means, rtol=1e-12)
    assert counts.tolist() == rec.attrs["channels"]["n_voxels"]
    assert _fp16_close(rec.read_all(), _reference_clean(means, 1.35, rec.attrs["bold"]["regressors"]), rec.scale)
    ijk = [np.argwhere(atlas == lab) for lab in labels]
    centroids = np.stack([nib.affines.apply_affine(nib.load(FMRI / "fmri1.nii.gz").affine, v).mean(0) for v in ijk])
    np.testing.assert_allclose(rec.spec.positions * 1000, centroids, atol=1e-9)


def test_roi_table_regresses_fmriprep_confounds_and_keeps_events(sample):
    store = ShardStore(sample[0]["voxel"])
    rec = store.recording("sub-nitimeroi_task-rest_atlas-nitime28_timeseries")
    reg = rec.attrs["bold"]["regressors"]
    assert reg["confounds"] == ["white_matter", "csf"] and reg["confounds_file"].endswith("desc-confounds_timeseries.tsv")
    assert rec.spec.n_channels == 28 and store.entry(rec.id)["positions"] == "none"
    csv = pd.read_csv(FMRI / "fmri_timeseries.csv")
    expected = _reference_clean(csv.iloc[:, 3:].to_numpy().T, 1.89, reg, csv[["WM", "Vent"]].to_numpy(), units="percent")
    assert _fp16_close(rec.read_all(), expected, rec.scale)
    ev = store.recording("sub-evrel_task-events_atlas-single_timeseries")
    assert len(ev.events) == 576 and sorted(set(ev.events.label)) == [f"type{k}" for k in range(1, 7)]
    x, y, onset = event_windows(ev, 8)
    assert x.shape == (len(y), 1, 8) and (onset == np.rint(ev.events.onset[: len(y)] / 2.0)).all()


def test_bad_runs_are_reported_and_the_others_convert(tmp_path):
    """A truncated NIfTI, a 3-D image, NaN voxels and a TR in ms, each from the real files."""
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "quirks", "BIDSVersion": "1.9.0"}))

    def run(sub: str, img: nib.Nifti1Image | None = None, tr: float = 1.35, raw: bytes | None = None) -> None:
        func = root / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        path = func / f"sub-{sub}_task-rest_bold.nii.gz"
        nib.save(img, path) if raw is None else path.write_bytes(raw)
        (func / f"sub-{sub}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": tr}))

    src = nib.load(FMRI / "fmri1.nii.gz")
    data = np.asarray(src.dataobj, dtype=np.float32)
    run("good", src)
    run("truncated", raw=(FMRI / "fmri2.nii.gz").read_bytes()[:40_000])
    run("onevolume", nib.Nifti1Image(data[..., 0], src.affine))
    nan = data.copy()
    nan[:2, :2, :2, 5] = np.nan
    header = src.header.copy()
    header.set_data_dtype(np.float32)  # int16 cannot hold NaN
    run("nan", nib.Nifti1Image(nan, src.affine, header))
    run("msec", src, tr=1350.0)
    report = convert(root, tmp_path / "store", "fmri-voxel", workers=1, progress=False)
    failed = {f["id"]: f["error"] for f in report.failed}
    assert set(failed) == {"sub-truncated_task-rest_bold", "sub-onevolume_task-rest_bold"}
    assert "truncated or damaged" in failed["sub-truncated_task-rest_bold"]
    assert "3-D image" in failed["sub-onevolume_task-rest_bold"]
    assert set(report.converted) == {"sub-good_task-rest_bold", "sub-nan_task-rest_bold", "sub-msec_task-rest_bold"}
    store = ShardStore(tmp_path / "store")
    assert any("8 voxel(s) hold NaN" in w for w in store.recording("sub-nan_task-rest_bold").warnings)
    msec = store.recording("sub-msec_task-rest_bold")
    assert msec.sfreq == pytest.approx(1 / 1.35) and any("milliseconds" in w for w in msec.warnings)
    assert store.recording("sub-nan_task-rest_bold").spec.n_channels == store.recording("sub-good_task-rest_bold").spec.n_channels - 8
    assert json.loads(sorted((tmp_path / "store" / "reports").glob("*.json"))[-1].read_text())["failed"]


# -- models ------------------------------------------------------------------------------
def _eeg_window(seconds: int) -> tuple[torch.Tensor, SensorSpec]:
    raw = mne.io.read_raw_edf(data_root() / "eegmat" / "Subject00_1.edf", preload=True, verbose="error")
    raw.rename_channels({n: n.removeprefix("EEG ") for n in raw.ch_names})
    raw.pick(["Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "Fz", "Cz", "Pz"])
    raw.crop(0, seconds - 1 / raw.info["sfreq"]).resample(200, verbose="error")
    raw.set_montage("standard_1020", verbose="error")
    loc = np.array([ch["loc"] for ch in raw.info["chs"]])
    spec = SensorSpec(raw.ch_names, ["eeg"] * len(raw.ch_names), loc, 200.0)
    return torch.tensor(raw.get_data()[:, : seconds * 200] * 1e6, dtype=torch.float32), spec


def test_bold_patches_round_trip():
    x = torch.randn(2, 3, 12)
    up = bold_patches(x, 4, 200)
    assert up.shape == (2, 3, 600)
    torch.testing.assert_close(volumes_of(up.reshape(2, 3, 3, 200), 4).reshape(2, 3, 12), x)


def test_mixed_eeg_bold_batch_trains(sample):
    rec = ShardStore(sample[0]["voxel"]).recording(NITIME)
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny")
    k, s = 4, 4  # 4 patches of 4 volumes; EEG: 4 patches of 1 s
    pick = np.arange(0, rec.spec.n_channels, 24)  # every 12th voxel keeps the test fast
    bold_x = bold_patches(torch.from_numpy(rec.read(0, k * s)[pick])[None], k, config.patch_size)[0]
    eeg_x, eeg_spec = _eeg_window(s)
    batch = mixed_batch([(eeg_x, eeg_spec), (bold_x, bold_spec_for_model(rec.spec.pick(pick), config.sfreq))])
    assert batch["sensor_type"][1, 0] == 3 and batch["channel_mask"][0].sum() == 13
    encoder, head = BrainEncoder(config), ReconstructionHead(config.d_model, config.patch_size)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    patch_mask = torch.zeros(*batch["channel_mask"].shape, s, dtype=torch.bool)
    patch_mask[:, :, -1] = batch["channel_mask"]
    losses = []
    for _ in range(4):
        loss, _ = masked_reconstruction(encoder, head, batch, patch_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert encoder.tokenizer.sensor_embedding.type_embedding.weight.grad[3].abs().sum() > 0  # bold's row learns


def _windows(n_subjects: int = 2, voxels=(300, 170), n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"s{i}": torch.randn(n, voxels[i], 8, generator=g).cumsum(-1) for i in range(n_subjects)}


def test_aggregation_is_adaptive_max_pool_over_voxels():
    x = torch.randn(2, 37, 4)
    pooled = VoxelAggregation(8)(x)
    torch.testing.assert_close(pooled, torch.nn.functional.adaptive_max_pool1d(x.transpose(1, 2), 8))


def test_cycle_loss_decreases():
    torch.manual_seed(0)
    data = _windows()
    model = MindBridge(MindBridgeConfig(n_pool=16, d_latent=16, d_hidden=32), subjects=list(data))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cycles = []
    for _ in range(25):
        total = 0.0
        for subject, x in data.items():
            out = model.loss(x[..., :4], x[..., 4:], subject)
            total = total + out["loss"]
            cycles.append(out["cycle"].item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert np.mean(cycles[-4:]) < 0.5 * np.mean(cycles[:4])


def test_reset_tuning_changes_only_the_new_subject():
    torch.manual_seed(0)
    data = _windows(3, voxels=(300, 170, 222))
    model = MindBridge(MindBridgeConfig(n_pool=16, d_latent=16, d_hidden=32), subjects=["s0", "s1"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = model.reset_tune("s2")
    new = {k for k in model.state_dict() if k.startswith(("embedders.s_s2.", "builders.s_s2."))}
    fresh = {k: model.state_dict()[k].clone() for k in new}
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        loss = model.loss(data["s2"][..., :4], data["s2"][..., 4:], "s2")["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert new and all(torch.equal(after[k], v) for k, v in before.items())
    assert all(not torch.equal(after[k], fresh[k]) for k in new if k.endswith("weight") and after[k].ndim == 2)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {k for k in new}


def test_lss_betas_recover_amplitudes():
    """Synthetic check of the GLM maths: events of known amplitude, no noise."""

    onsets = np.arange(5, 200, 12)
    amp = np.linspace(1, 3, len(onsets))
    sticks = np.zeros(220)
    sticks[onsets] = amp
    series = np.convolve(sticks, hrf(2.0))[:220][None]
    # LSS's "all other events" regressor assumes one amplitude for them: a bias below 0.5 % here
    np.testing.assert_allclose(lss_betas(series, onsets, 2.0)[:, 0], amp, rtol=5e-3)
