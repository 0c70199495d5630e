"""BOLD for brainfm's models: ROIs/voxels as sensors, mixed EEG+BOLD batches, event-locked data.

**Path (a), BOLD as sensors.** Each voxel or ROI is a channel of type ``bold`` with its
centroid as position (``SensorSpec`` from the store), so the sensor tokenizer, criss-cross
blocks and heads of :mod:`brainfm.models` apply unchanged, as BrainLM (Caro et al., ICLR 2024)
and Brain-JEPA (Dong et al., NeurIPS 2024) tokenize parcel time series with their positions.
A token covers ``k`` volumes (TRs). The model's patch has ``P`` samples (1 s at 200 Hz for
EEG), so each ``k``-volume patch is linearly interpolated to ``P`` samples
(:func:`bold_patches`) and predictions are read back at the volumes (:func:`volumes_of`).
One batch can then hold EEG, MEG and BOLD windows with the same number of patches,
padded along channels, which is what joint fMRI/EEG/MEG pretraining (Brain-OF, 2026) needs:
:class:`brainfm.data.mixed.MixedDataModule` serves such batches from stores to
:class:`brainfm.tasks.PretrainModule`; :func:`mixed_batch` builds one from tensors in hand.

**Event-locked data** for decoding: :func:`event_windows` cuts windows after each event
of a stored recording; :func:`lss_betas` is the GLM-style baseline (least-squares-separate
single-trial betas, Mumford et al., NeuroImage 2012, on SPM's canonical HRF).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import gamma

from brainfm.data.mixed import at_rate, bold_to_patches
from brainfm.data.store import Recording
from brainfm.signal import SensorSpec, collate_sensors
from brainfm.tasks.pretrain import masked_mse


def bold_patches(x: torch.Tensor, k: int, patch_size: int) -> torch.Tensor:
    """``(B, C, S·k)`` volumes -> ``(B, C, S·P)``: each ``k``-volume patch linearly interpolated
    to ``P`` samples (:func:`brainfm.data.mixed.bold_to_patches`, which the mixed DataModule uses)."""
    return bold_to_patches(x, k, patch_size)


def volumes_of(patches: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`bold_patches` per patch: ``(..., P)`` -> ``(..., k)``, the least-squares
    volumes under the interpolation (exact on interpolated patches, a projection on predictions)."""
    p = patches.shape[-1]
    eye = torch.eye(k, dtype=patches.dtype, device=patches.device)[:, None]  # (k, 1, k)
    basis = F.interpolate(eye, size=p, mode="linear", align_corners=True)[:, 0]  # (k, P)
    return patches @ torch.linalg.pinv(basis)  # (..., P) @ (P, k) -> (..., k)


def mixed_batch(items: Sequence[tuple[torch.Tensor, SensorSpec]]) -> dict[str, torch.Tensor]:
    """Pad windows of any modality ``(C_i, T)`` (same ``T``, in model samples) into one batch:
    ``x`` ``(B, C_max, T)`` plus the sensor tensors of :func:`brainfm.signal.collate_sensors`."""
    t = {x.shape[-1] for x, _ in items}
    if len(t) != 1:
        raise ValueError(f"windows of different lengths {sorted(t)}; cut them to the same number of patches")
    batch = collate_sensors([spec for _, spec in items])
    x = torch.zeros(len(items), batch["channel_mask"].shape[1], t.pop())
    for i, (w, _) in enumerate(items):
        x[i, : w.shape[0]] = w
    return {"x": x, **batch}


def masked_reconstruction(encoder: torch.nn.Module, head: torch.nn.Module, batch: dict[str, torch.Tensor],
                          patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretraining loss (masked-patch MSE, as :class:`brainfm.tasks.PretrainModule`) of a
    batch with a given ``patch_mask`` ``(B, C, S)``; returns ``(loss, prediction (B, C, S, P))``."""
    x, mask = batch["x"], batch["channel_mask"]
    target = encoder.patchify(x, batch["sensor_type"], mask)  # (B, C, S, P)
    tokens = encoder(x, batch["sensor_geometry"], batch["sensor_type"], mask, patch_mask)
    pred = head(tokens)  # (B, C, S, P)
    return masked_mse(pred, target, patch_mask), pred


def bold_spec_for_model(spec: SensorSpec, model_sfreq: float) -> SensorSpec:
    """The recording's BOLD spec relabelled at the model's rate (patches are resampled)."""
    return at_rate(spec, model_sfreq)


# --------------------------------------------------------------------------------------
# event-locked data and the GLM-style baseline
# --------------------------------------------------------------------------------------
def event_windows(rec: Recording, n_volumes: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of ``n_volumes`` starting ``offset`` volumes after each event.

    Returns ``X`` ``(E, C, n_volumes)``, labels ``(E,)`` and event onsets in volumes ``(E,)``;
    events whose window leaves the run are dropped.
    """
    data = rec.read_all()  # (C, T): a BOLD run is small; one read
    onset = np.rint(rec.events.onset * rec.sfreq).astype(np.int64) + offset
    keep = (onset >= 0) & (onset + n_volumes <= rec.n_samples)
    idx = onset[keep][:, None] + np.arange(n_volumes)  # (E, n_volumes)
    return data[:, idx].transpose(1, 0, 2), rec.events.label[keep], onset[keep] - offset


def hrf(tr: float, length_s: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``tr`` s (peak ~5 s, undershoot ~15 s,
    ratio 1:6), normalised to unit sum."""
    t = np.arange(0.0, length_s, tr)
    h = gamma.pdf(t, 6.0) - gamma.pdf(t, 16.0) / 6.0
    return h / h.sum()


def lss_betas(series: np.ndarray, onsets: np.ndarray, tr: float) -> np.ndarray:
    """Least-squares-separate single-trial betas (Mumford et al., 2012): for each event, a GLM
    with its own HRF regressor, one for all other events and a constant. ``series`` ``(C, T)``,
    ``onsets`` in volumes -> betas ``(E, C)``."""
    n = series.shape[1]
    h = hrf(tr)
    sticks = np.zeros((len(onsets), n))
    sticks[np.arange(len(onsets)), onsets] = 1.0
    regs = np.stack([np.convolve(s, h)[:n] for s in sticks])  # (E, T)
    total = regs.sum(axis=0)
    out = np.empty((len(onsets), series.shape[0]))
    for e in range(len(onsets)):
        x = np.stack([regs[e], total - regs[e], np.ones(n)], axis=1)  # (T, 3)
        beta, *_ = np.linalg.lstsq(x, series.T, rcond=None)  # (3, C)
        out[e] = beta[0]
    return out


__all__ = ["bold_patches", "bold_spec_for_model", "event_windows", "hrf", "lss_betas", "masked_reconstruction",
           "mixed_batch", "volumes_of"]
