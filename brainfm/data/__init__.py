"""Reading shard stores: windows, subject splits, subject-adaptive normalisation, the data
summary and sampling helpers.

The store format (:mod:`brainfm.data.store`) is written here too (:mod:`brainfm.data.store_write`), by the
conversion pipelines. Nothing here imports MNE or :mod:`brainfm.pipelines`; the LightningDataModules
live in :mod:`brainfm.data.datamodule`.
"""

from brainfm.data.dataset import EntityLabels, EventWindows, FixedWindows, ShuffledWindows, collate_windows
from brainfm.data.normalize import RunningMoments, SubjectNormalizer, SubjectStats, fit_normalizer, subject_stats
from brainfm.data.root import cache_home, data_root
from brainfm.data.sampling import calibration_batches, calibration_windows, evenly_spaced, window_loader
from brainfm.data.splits import SubjectSplit, calibration_spans, eegmat_cbramod, kfold_subjects, leave_one_subject_out, random_split
from brainfm.data.store import FORMAT_VERSION, Recording, ShardStore
from brainfm.data.summary import DataSummary

__all__ = [
    "FORMAT_VERSION", "DataSummary", "EntityLabels", "EventWindows", "FixedWindows", "Recording", "RunningMoments",
    "ShardStore", "ShuffledWindows", "SubjectNormalizer", "SubjectSplit", "SubjectStats", "fit_normalizer", "subject_stats", "cache_home", "calibration_batches", "calibration_spans", "calibration_windows",
    "collate_windows", "data_root", "eegmat_cbramod", "evenly_spaced", "kfold_subjects", "leave_one_subject_out",
    "random_split", "window_loader",
]
