"""Label-free subject adaptation: each subject's FiLM matched to its own token statistics.

Adaptive batch normalisation (AdaBN; Li, Wang, Shi, Hou & Liu, "Adaptive batch normalization
for practical domain adaptation", Pattern Recognition 80, 2018) re-estimates normalisation
statistics on the target domain, without labels, and Domain-Specific Batch Normalization
(Chang et al., CVPR 2019) keeps one set per domain during training. Here a domain is a
subject, and the statistics are those of the encoder's output tokens: for subject ``s`` the
per-feature mean ``μ_s`` and standard deviation ``σ_s`` over its windows, channels and
patches. The subject's FiLM layer (:class:`brainfm.models.subject.SubjectAdapter`,
``γ_s ⊙ z + β_s``) is *set*, not trained::

    γ_s = 1 / σ_s,   β_s = -μ_s / σ_s        (each subject's tokens standardised per feature)

so the head always reads tokens standardised within the subject: the feature-space analogue
of per-subject feature z-scoring, which lifts the classical EEGMAT pipeline from 0.750 to
0.847 (``docs/results.md``). It is the label-free sibling of reset-tuning: reset-tuning fits
the same layer by gradient on labelled windows, this fits it in closed form on unlabelled ones.

Training and evaluation do the same thing (``DecodeModule(token_stats=True)``): at every
training epoch start the training subjects' statistics are re-estimated with the current
encoder (eval mode, no gradient, up to ``max_windows`` windows each), and before validation,
test and prediction every subject of that loader gets its own. Sources, as for input
normalisation (:mod:`brainfm.data.normalize`): ``session`` (all of the subject's windows in the
loader: transductive) or ``calibration`` (only windows inside the first ``seconds`` of the
subject, :func:`brainfm.data.splits.calibration_spans`). Labels are never read.

A new subject after training (:func:`adapt_decoder`, ``brainfm adapt``): its unlabelled windows,
normalised as the decoder's training windows were, set its layers and input statistics in a copy
of the decoder file, which ``brainfm export/quantize/detect --subject`` then deploy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from brainfm.data.dataset import FixedWindows, collate_windows
from brainfm.data.normalize import fit_normalizer
from brainfm.data.store import ShardStore
from brainfm.data.splits import calibration_spans
from brainfm.data.summary import DataSummary
from brainfm.models.decoder import DEFAULT_WINDOW_S, window_for
from brainfm.models.serialization import decoder_from_weights, read_weights, save_decoder

SOURCES = ("session", "calibration")
#: Floor on σ_s (tokens are layer-normalised, so features have order-one spread).
STD_FLOOR = 1e-4


@dataclass
class TokenMoments:
    """Running per-feature sums of one subject's valid tokens (float64)."""

    count: float = 0.0
    total: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None

    def update(self, tokens: torch.Tensor) -> None:
        """Add ``tokens`` ``(N, D)`` (valid tokens only)."""
        t = tokens.detach().double()
        s, sq = t.sum(0), (t * t).sum(0)
        self.total = s if self.total is None else self.total + s
        self.total_sq = sq if self.total_sq is None else self.total_sq + sq
        self.count += t.shape[0]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count < 2:
            raise ValueError("token statistics need at least two tokens")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0.0)
        return mean.float(), var.sqrt().clamp_min(STD_FLOOR).float()


def window_indices(dataset, source: str = "session", seconds: float = 60.0,
                   max_windows: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Per subject, the indices of ``dataset``'s windows its statistics are estimated from.

    ``dataset`` is a :class:`~brainfm.data.FixedWindows` (``rec_index``, ``starts``, ``window``,
    ``recordings``, ``subjects``, ``sfreq``). ``calibration`` keeps windows that end inside the
    calibration span of their recording; ``max_windows`` draws that many at random (fixed seed).
    """
    if source not in SOURCES:
        raise ValueError(f"token statistics source must be one of {SOURCES}, got {source!r}")
    subjects = np.asarray(dataset.subjects)[dataset.rec_index]
    keep = np.ones(len(dataset.rec_index), dtype=bool)
    if source == "calibration":
        ends = np.full(len(dataset.recordings), np.inf)
        for subject in np.unique(subjects):
            recs = sorted({int(i) for i in dataset.rec_index[subjects == subject]})
            durations = {dataset.recordings[i]: dataset.store.entry(dataset.recordings[i])["n_samples"] / dataset.sfreq
                         for i in recs}
            calib, _ = calibration_spans(durations, seconds)
            for i in recs:
                ends[i] = calib[dataset.recordings[i]][1] * dataset.sfreq
        keep = dataset.starts + dataset.window <= ends[dataset.rec_index]
    rng = np.random.default_rng(seed)
    out = {}
    for subject in np.unique(subjects):
        idx = np.flatnonzero(keep & (subjects == subject))
        if len(idx) == 0:
            raise ValueError(f"subject {subject!r} has no window inside its first {seconds:g} s")
        if max_windows is not None and len(idx) > max_windows:
            idx = np.sort(rng.choice(idx, max_windows, replace=False))
        out[str(subject)] = idx
    return out


@torch.no_grad()
def token_moments(encoder: torch.nn.Module, batches: Iterable[Mapping], device: torch.device | str = "cpu"
                  ) -> dict[str, TokenMoments]:
    """Per-subject moments of ``encoder``'s output tokens over the valid channels of ``batches``."""
    moments: dict[str, TokenMoments] = {}
    for batch in batches:
        mask = batch["channel_mask"].to(device)
        tokens = encoder(batch["x"].to(device), batch["sensor_geometry"].to(device),
                         batch["sensor_type"].to(device), mask)  # (B, C, S, D)
        for subject in dict.fromkeys(batch["subject"]):
            rows = torch.as_tensor([s == subject for s in batch["subject"]], device=mask.device)
            valid = tokens[rows][mask[rows]]  # (N_valid_channels, S, D)
            moments.setdefault(subject, TokenMoments()).update(valid.reshape(-1, valid.shape[-1]))  # (N*S, D)
    return moments


def match_subjects(decoder, moments: Mapping[str, TokenMoments], channels: Mapping[str, int]) -> list[str]:
    """Set each subject's FiLM to standardise its tokens (see the module docstring); subjects
    without layers get fresh ones (``channels``: their channel counts). FiLM is frozen."""
    for subject, m in moments.items():
        if subject not in decoder.subjects:
            decoder.subjects.add(subject, channels[subject])
        mean, std = m.mean_std()
        adapter = decoder.subjects.get(subject)
        adapter.token_scale.data.copy_(1.0 / std)
        adapter.token_shift.data.copy_(-mean / std)
        adapter.requires_grad_(False)
    return sorted(moments)


def adapt_dataset(decoder, dataset, source: str = "session", seconds: float = 60.0, max_windows: int | None = None,
                  batch_size: int = 64, device: torch.device | str = "cpu", seed: int = 0,
                  exclude: Collection[str] = ()) -> list[str]:
    """Estimate and set the token statistics of every subject of ``dataset`` but those in
    ``exclude`` (e.g. reset-tuned subjects, whose layers were trained); no labels are read."""
    modes = {module: module.training for module in decoder.modules()}  # restored one by one: Lightning
    decoder.eval()                                                     # tracks each module's mode
    try:
        moments: dict[str, TokenMoments] = {}
        for subject, idx in window_indices(dataset, source, seconds, max_windows, seed).items():
            if subject in exclude:
                continue
            loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size, collate_fn=collate_windows)
            moments.update(token_moments(decoder.encoder, loader, device))
        return match_subjects(decoder, moments, DataSummary.of(dataset).subject_channels())
    finally:
        for module, training in modes.items():
            module.train(training)


def adapt_decoder(path: str | os.PathLike, store: str | ShardStore, subjects: Sequence[str], out: str | os.PathLike,
                  source: str = "session", seconds: float = 60.0, window_s: float | None = None,
                  **entities) -> list[str]:
    """Add ``subjects`` to a decoder trained with token statistics, without labels, and write it to ``out``.

    Each subject's windows of ``store`` (recordings matching ``entities``, e.g. ``task="rest"``) are
    normalised with the decoder's input method and that subject's own statistics (``source``: its
    session, or its first ``seconds``), which join the decoder's; then its FiLM standardises its
    tokens (:func:`adapt_dataset`). Everything else in the file is kept. Returns the subjects set.
    ``window_s``: the statistics' window length (default: the decoder's training window, else 5 s).

    Raises
    ------
    ValueError
        The decoder was not trained with token statistics, a subject was reset-tuned in it, or a
        subject has no recordings.
    """
    weights = read_weights(path)  # read once: the decoder, and the extra record the new file keeps
    decoder = decoder_from_weights(weights, path)
    tuned = sorted(set(subjects) & set(weights.extra.get("reset_subjects") or ()))
    if tuned:
        raise ValueError(f"{path}: the layers of {tuned} were reset-tuned on labels; adapt sets label-free "
                         "statistics for new subjects only")
    if not decoder.token_stats:
        raise ValueError(f"{path} was not trained with token statistics: there is no label-free layer to set "
                         "(reset-tune it on the subject's labelled data: configs/finetune/eegmat-reset.yaml)")
    shard_store = store if isinstance(store, ShardStore) else ShardStore(store)
    missing = [s for s in subjects if not shard_store.select([s], **entities)]
    if missing:
        raise ValueError(f"no recordings of {missing} {entities or ''} in {shard_store.url}")
    window_s = window_for(decoder.window_s, window_s, DEFAULT_WINDOW_S)
    windows = FixedWindows(shard_store, window_s, recordings=shard_store.select(subjects, **entities))
    if decoder.normalization is not None:
        normalizer = fit_normalizer([windows], json.loads(decoder.normalization[1])["method"], source, seconds)
        windows.normalizer = normalizer
        decoder.normalization = normalizer.added_to(decoder.normalization)
    done = adapt_dataset(decoder, windows, source, seconds)
    save_decoder(decoder, out, extra=weights.extra)
    return done


__all__ = ["SOURCES", "TokenMoments", "adapt_dataset", "adapt_decoder", "match_subjects", "token_moments",
           "window_indices"]
