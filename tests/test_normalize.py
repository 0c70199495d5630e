"""Subject-adaptive normalisation (brainfm.data.normalize): the maths on synthetic signals, and on
real EEGMAT windows that no statistic depends on labels or on other subjects, and that the
statistics travel with a decoder."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from brainfm.data.datamodule import DecodingDataModule
from brainfm.data.normalize import (
    RunningMoments,
    SubjectNormalizer,
    fit_normalizer,
    inverse_sqrt,
    subject_stats,
)
from brainfm.data.splits import calibration_spans
from brainfm.models import load_decoder, read_weights
from brainfm.tasks import DecodeModule

LABELS = {"rest": 0, "arithmetic": 1}
SPLIT = {"train": ["eegmat00", "eegmat01"], "val": ["eegmat28"], "test": ["eegmat32"]}


def _session(seed: int = 0, c: int = 4, windows: int = 50, t: int = 200) -> np.ndarray:
    """Correlated channels with different offsets and scales, cut into ``(windows, C, T)``."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) + 2 * np.eye(c)
    x = mixing @ rng.normal(size=(c, windows * t)) * rng.uniform(1, 30, size=(c, 1)) + rng.normal(0, 50, size=(c, 1))
    return x.reshape(c, windows, t).transpose(1, 0, 2)  # (C, W*T) -> (W, C, T)


# -- maths ---------------------------------------------------------------------------------
def test_zscore_gives_zero_mean_unit_variance_per_channel():
    x = _session()
    stats = RunningMoments(4).update(x).stats("s", "session")
    z = stats.apply(x, "zscore")  # (W, C, T)
    flat = z.transpose(1, 0, 2).reshape(4, -1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-9)
    np.testing.assert_allclose(flat.std(1), 1, atol=1e-9)


def test_euclidean_alignment_makes_the_mean_covariance_the_identity():
    x = _session(1)
    stats = RunningMoments(4).update(x).stats("s", "session")
    a = stats.apply(x, "align")
    mean_cov = np.einsum("wct,wdt->cd", a, a) / (a.shape[0] * a.shape[2])  # mean of x_i x_iᵀ / T
    np.testing.assert_allclose(mean_cov, np.eye(4), atol=1e-8)
    assert not np.allclose(np.einsum("wct,wdt->cd", *(2 * [stats.apply(x, "zscore")])) / (50 * 200), np.eye(4), atol=0.05)


def test_inverse_sqrt_whitens_and_survives_a_rank_deficient_montage():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    r = a @ a.T + np.eye(5)
    w = inverse_sqrt(r)
    np.testing.assert_allclose(w @ r @ w, np.eye(5), atol=1e-9)
    x = rng.normal(size=(5, 1000))
    x -= x.mean(0)  # average reference: rank 4
    assert np.isfinite(inverse_sqrt(np.cov(x))).all()


def test_running_estimate_converges_to_the_session_estimate():
    x = _session(2, windows=200)
    session = RunningMoments(4).update(x).stats("s", "session")
    running, errors = RunningMoments(4), []
    for k, window in enumerate(x):
        running.update(window)
        if k in (4, 19, 99, 199):
            s = running.stats("s", "running")
            errors.append(max(np.abs(s.mean - session.mean).max() / session.std.max(),
                              np.abs(s.whitening - session.whitening).max()))
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 1e-9
    forgetting = RunningMoments(4, decay=0.99)
    for window in x:
        forgetting.update(window)
    s = forgetting.stats("s", "running")
    np.testing.assert_allclose(s.std, session.std, rtol=0.1)
    assert s.source == "running"


def test_normalizer_refuses_unknown_subjects_and_methods():
    norm = SubjectNormalizer("zscore", {"a": RunningMoments(4).update(_session()).stats("a", "session")})
    with pytest.raises(KeyError, match="no normalisation statistics for subject 'b'"):
        norm("b", np.zeros((4, 10)))
    with pytest.raises(ValueError, match="normalize must be one of"):
        SubjectNormalizer("whiten")
    with pytest.raises(ValueError, match="stats_source"):
        DecodingDataModule(store="x", label_map=LABELS, normalize="zscore", stats_source="yesterday")


# -- real EEGMAT windows ---------------------------------------------------------------------
def _dm(store, **kwargs) -> DecodingDataModule:
    kwargs = {"split": SPLIT, "label_map": LABELS, "batch_size": 16, **kwargs}
    dm = DecodingDataModule(store=str(store), **kwargs)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def aligned(small_sample):
    return _dm(small_sample[1], normalize="align")


def _assert_same_stats(a: SubjectNormalizer, b: SubjectNormalizer, subjects=None) -> None:
    for subject in subjects or a.stats:
        for key in ("mean", "std", "whitening", "scale"):
            np.testing.assert_array_equal(getattr(a.stats[subject], key), getattr(b.stats[subject], key))


def test_every_subject_gets_statistics_and_every_part_the_same_normalizer(aligned):
    assert sorted(aligned.normalizer.stats) == ["eegmat00", "eegmat01", "eegmat28", "eegmat32"]
    assert all(aligned.sets[p].normalizer is aligned.normalizer for p in ("train", "val", "test"))
    summary = aligned.summary.normalization
    assert (summary["method"], summary["source"]) == ("align", "session")
    ds = aligned.sets["test"]
    sample = ds[3]
    i, start = int(ds.rec_index[3]), int(ds.starts[3])
    raw = ds.signal(i, start, start + ds.window)
    expected = aligned.normalizer.stats["eegmat32"].apply(raw.astype(np.float64), "align")
    np.testing.assert_allclose(sample["x"].numpy(), expected, rtol=1e-5, atol=1e-4)


def test_statistics_do_not_depend_on_labels(small_sample, aligned):
    flipped = _dm(small_sample[1], normalize="align", label_map={"rest": 1, "arithmetic": 0})
    _assert_same_stats(aligned.normalizer, flipped.normalizer)
    # Permuting every window's label in the datasets leaves the statistics unchanged too.
    rng = np.random.default_rng(0)
    for part in ("train", "val", "test"):
        flipped.sets[part].labels = rng.permutation(flipped.sets[part].labels)
    _assert_same_stats(aligned.normalizer, fit_normalizer(flipped.sets.values(), "align"))


def test_each_subject_statistics_come_only_from_its_own_signal(small_sample, aligned):
    alone = _dm(small_sample[1], normalize="align", split={"train": ["eegmat00"], "test": ["eegmat01"]})
    assert sorted(alone.normalizer.stats) == ["eegmat00", "eegmat01"]
    _assert_same_stats(alone.normalizer, aligned.normalizer)  # other subjects present or not: same numbers
    ds = aligned.sets["train"]
    own = [ds.signal(i) for i, s in enumerate(ds.subjects) if s == "eegmat01"]
    direct = subject_stats(own, "eegmat01", ds.specs[ds.subjects.index("eegmat01")])
    np.testing.assert_allclose(direct.whitening, aligned.normalizer.stats["eegmat01"].whitening)


def test_calibration_source_uses_the_first_seconds(small_sample, aligned):
    calib = _dm(small_sample[1], normalize="zscore", stats_source="calibration", stats_seconds=30.0)
    s = calib.normalizer.stats["eegmat32"]
    assert (s.source, s.seconds) == ("calibration", 30.0)
    ds = calib.sets["test"]
    durations = {rid: ds.store.entry(rid)["n_samples"] / ds.sfreq for rid in ds.recordings}
    spans, _ = calibration_spans(durations, 30.0)
    first = [ds.signal(i, 0, int(round(spans[rid][1] * ds.sfreq))) for i, rid in enumerate(ds.recordings)]
    assert s.n_samples == sum(f.shape[1] for f in first) == pytest.approx(30.0 * ds.sfreq, abs=2)
    np.testing.assert_allclose(s.mean, subject_stats(first, "eegmat32", ds.specs[0]).mean)
    assert not np.allclose(s.std, aligned.normalizer.stats["eegmat32"].std)


def test_decoder_round_trip_keeps_the_statistics(aligned, tmp_path):
    pl.seed_everything(0)
    module = DecodeModule(model="tiny", classes=list(LABELS))
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(module, aligned)
    path = tmp_path / "decoder.safetensors"
    module.export_safetensors(path)
    decoder = load_decoder(path)
    restored = SubjectNormalizer.from_tensors(*decoder.normalization)
    assert restored.method == "align"
    _assert_same_stats(aligned.normalizer, restored)
    weights = read_weights(path)
    assert not any(k.startswith("normalization") for k in weights.state)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        extra = json.loads(f.metadata()["extra"])
    assert extra["normalization"] == {"method": "align", "source": "session"}
    # A new subject at deploy time: its own statistics from the same function.
    ds = aligned.sets["test"]
    restored.add(subject_stats([ds.signal(0)], "newcomer", ds.specs[0]))
    batch = torch.from_numpy(ds.signal(0, 0, ds.window)).unsqueeze(0)  # (1, C, T)
    assert restored("newcomer", batch).shape == batch.shape
    # The same decoder on data normalised another way is refused.
    plain = DecodingDataModule(store=ds.store.url, split=SPLIT, label_map=LABELS, batch_size=16)
    with pytest.raises(ValueError, match="normalize='align'"):
        pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(
            DecodeModule(init_from=str(path)), plain, verbose=False)
