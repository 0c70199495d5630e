"""Reading shard stores: windows, subject splits and LightningDataModules.

Nothing here imports MNE; conversion lives in :mod:`brainfm.pipelines`.
"""

from brainfm.data.dataset import EntityLabels, EventWindows, FixedWindows, ShuffledWindows, collate_windows
from brainfm.data.root import cache_home, data_root
from brainfm.data.splits import SubjectSplit, calibration_spans, eegmat_cbramod, kfold_subjects, leave_one_subject_out, random_split
from brainfm.data.store import FORMAT_VERSION, Recording, ShardStore

__all__ = [
    "FORMAT_VERSION", "EntityLabels", "EventWindows", "FixedWindows", "Recording", "ShardStore",
    "ShuffledWindows", "SubjectSplit", "calibration_spans", "cache_home", "collate_windows", "data_root", "eegmat_cbramod",
    "kfold_subjects", "leave_one_subject_out", "random_split",
]
