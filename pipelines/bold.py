"""BOLD maths for conversion: masks, ROI means, centroids and the cleaning regression.

Everything here is plain numpy on arrays already read (:mod:`brainfm.pipelines.bids_func`
reads the files), so the tests can check each step against an independent reference.

Cleaning follows the usual single-regression practice (nilearn's ``signal.clean``, SPM's
high-pass filter): one least-squares fit of a design holding

* Legendre polynomials of order ``0..detrend`` over the run (detrending);
* discrete cosines with periods longer than ``1 / high_pass`` (SPM's ``spm_filter``
  basis: ``k = floor(2 · N · TR · high_pass)`` cosines);
* the confound columns, z-scored,

whose residual is the cleaned signal. Fitting them together avoids re-introducing a
removed component, which sequential filtering does (Lindquist et al., Hum. Brain Mapp. 2019).
Units: percent signal change ``100 · residual / mean`` with the mean taken *before* cleaning
(BrainLM's and Brain-JEPA's inputs are of this kind), or the residual z-scored within the run.

Slice-timing correction (:func:`slice_time_correct`, before everything else) shifts each
slice's series to one reference time within the TR by Fourier interpolation, SPM's
``spm_slice_timing`` method (Sladky et al., NeuroImage 2011, review the practice). The reference
is the middle of the acquisition range, fMRIPrep's default (``slice_time_ref = 0.5``). The
series is mirror-extended to twice its length before the FFT, so the periodic extension has no
jump between the last and the first volume (which would ring through the whole run).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import legendre

#: Fewer residual degrees of freedom than this and the run is cleaned with the constant only.
MIN_DOF = 2
#: The mask of a voxel run: the voxel's mean over time above this fraction of the 98th
#: percentile of the mean image (a simple intensity mask; nilearn's ``compute_epi_mask``
#: looks for a histogram gap instead).
INTENSITY_PERCENTILE = 98.0


def slice_reference(times: np.ndarray) -> float:
    """The reference time (s): the middle of the slice acquisition range (fMRIPrep's default)."""
    return float(times.min() + 0.5 * (times.max() - times.min()))


def slice_time_correct(data: np.ndarray, times: np.ndarray, tr: float, axis: int,
                       reference: float | None = None) -> np.ndarray:
    """Shift every slice of ``data`` ``(X, Y, Z, T)`` to the ``reference`` time (s after the volume
    start; default :func:`slice_reference`).

    ``times`` ``(n_slices,)`` are the acquisition times (s) of the slices along ``axis`` (0, 1
    or 2), as BIDS ``SliceTiming``. Slice ``s`` sampled volume ``n`` at ``n·TR + times[s]``; the
    output holds its value at ``n·TR + reference``, i.e. the series read ``d = (reference -
    times[s]) / TR`` volumes later, by a phase ramp ``exp(2πi f d)`` on the mirror-extended
    series. Returns float64 of the same shape.
    """
    n = data.shape[-1]
    if len(times) != data.shape[axis]:
        raise ValueError(f"{len(times)} slice times for {data.shape[axis]} slices along axis {axis}")
    ref = slice_reference(times) if reference is None else reference
    moved = np.moveaxis(np.asarray(data, dtype=np.float64), axis, 0)  # (S, a, b, T)
    ext = np.concatenate([moved, moved[..., ::-1]], axis=-1)  # (S, a, b, 2T): mirror, no wrap jump
    spectrum = np.fft.rfft(ext, axis=-1)  # (S, a, b, T + 1)
    freqs = np.fft.rfftfreq(2 * n)  # cycles per volume
    delay = (ref - np.asarray(times, dtype=np.float64)) / tr  # (S,) volumes
    ramp = np.exp(2j * np.pi * delay[:, None] * freqs[None, :])  # (S, T + 1)
    shifted = np.fft.irfft(spectrum * ramp[:, None, None, :], n=2 * n, axis=-1)[..., :n]  # (S, a, b, T)
    return np.moveaxis(shifted, 0, axis)


def intensity_mask(mean_image: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the voxels whose mean exceeds ``fraction`` × its 98th percentile."""
    finite = mean_image[np.isfinite(mean_image)]
    if finite.size == 0:
        return np.zeros(mean_image.shape, dtype=bool)
    threshold = fraction * np.percentile(finite, INTENSITY_PERCENTILE)
    return np.isfinite(mean_image) & (mean_image > threshold)


def world_mm(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World coordinates (mm) ``(n, 3)`` of voxel indices ``(n, 3)`` through a 4×4 affine."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def atlas_on_grid(atlas: np.ndarray, atlas_affine: np.ndarray, shape: tuple[int, ...],
                  affine: np.ndarray) -> np.ndarray:
    """The atlas's label at each voxel of an image grid (nearest neighbour through world space).

    Voxels that fall outside the atlas get label 0 (background).
    """
    ijk = np.indices(shape[:3]).reshape(3, -1).T  # (V, 3)
    world = world_mm(affine, ijk)  # (V, 3)
    inv = np.linalg.inv(atlas_affine)
    idx = np.rint(world @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)  # (V, 3) atlas indices
    inside = ((idx >= 0) & (idx < np.asarray(atlas.shape[:3]))).all(axis=1)
    labels = np.zeros(len(ijk), dtype=np.int64)
    labels[inside] = atlas[tuple(idx[inside].T)]
    return labels.reshape(shape[:3])


def roi_means(data: np.ndarray, labels: np.ndarray, label_ids: np.ndarray,
              valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean time series per label: ``data`` ``(X, Y, Z, T)`` -> ``(R, T)`` and voxel counts ``(R,)``.

    Only voxels where ``valid`` (finite over time) count; a label without any gives NaN.
    """
    flat = data.reshape(-1, data.shape[-1])  # (V, T)
    lab = np.where(valid.ravel(), labels.ravel(), 0)  # (V,)
    out = np.full((len(label_ids), data.shape[-1]), np.nan)
    counts = np.zeros(len(label_ids), dtype=np.int64)
    for r, label in enumerate(label_ids):
        rows = lab == label
        counts[r] = int(rows.sum())
        if counts[r]:
            out[r] = flat[rows].mean(axis=0, dtype=np.float64)
    return out, counts


def roi_centroids(labels: np.ndarray, label_ids: np.ndarray, valid: np.ndarray,
                  affine: np.ndarray) -> np.ndarray:
    """World centroid (mm) ``(R, 3)`` of each label's valid voxels; NaN for an empty label."""
    out = np.full((len(label_ids), 3), np.nan)
    lab = np.where(valid, labels, 0)
    for r, label in enumerate(label_ids):
        ijk = np.argwhere(lab == label)
        if len(ijk):
            out[r] = world_mm(affine, ijk).mean(axis=0)
    return out


def n_cosines(n_volumes: int, tr: float, high_pass: float | None) -> int:
    """Discrete cosines below ``high_pass`` Hz for a run of ``n_volumes`` at ``tr`` s."""
    if not high_pass:
        return 0
    return int(np.floor(2.0 * n_volumes * tr * high_pass))


def design(n_volumes: int, tr: float, detrend: int, high_pass: float | None,
           confounds: np.ndarray | None = None) -> np.ndarray:
    """The cleaning design ``(T, K)``: Legendre polynomials, cosines, z-scored confounds."""
    t = np.linspace(-1.0, 1.0, n_volumes)
    cols = [legendre.legval(t, np.eye(detrend + 1)[k]) for k in range(detrend + 1)]
    n = np.arange(n_volumes)
    cols += [np.cos(np.pi * (2 * n + 1) * k / (2 * n_volumes)) for k in range(1, n_cosines(n_volumes, tr, high_pass) + 1)]
    if confounds is not None and confounds.size:
        c = confounds - confounds.mean(axis=0)
        sd = c.std(axis=0)
        cols += list((c / np.where(sd > 0, sd, 1.0)).T)
    return np.stack(cols, axis=1)  # (T, K)


def clean(series: np.ndarray, x: np.ndarray, units: str) -> tuple[np.ndarray, np.ndarray]:
    """Regress the design ``x`` ``(T, K)`` out of ``series`` ``(C, T)``; express in ``units``.

    Returns the cleaned ``(C, T)`` float64 and, per channel, whether it could be expressed in
    those units (``psc`` needs a positive mean, ``z`` a non-zero residual); rows that cannot
    are zero.
    """
    mean = series.mean(axis=1)  # (C,)
    beta, *_ = np.linalg.lstsq(x, series.T, rcond=None)  # (K, C)
    resid = series - (x @ beta).T  # (C, T)
    if units == "psc":
        ok = mean > 0
        out = 100.0 * resid / np.where(ok, mean, 1.0)[:, None]
    elif units == "z":
        sd = resid.std(axis=1)
        ok = sd > 1e-12 * np.maximum(np.abs(mean), 1.0)
        out = resid / np.where(ok, sd, 1.0)[:, None]
    elif units == "percent":  # already percent signal change: residual only
        ok = np.ones(len(series), dtype=bool)
        out = resid
    else:
        raise ValueError(f"unknown BOLD units {units!r}; use 'psc' or 'z'")
    out[~ok] = 0.0
    return out, ok

