"""``brainfm sample-data``: the bundled sample, a real multi-format BIDS dataset and its store.

The sample is built from the real recordings under the data root with mne-bids
(``write_raw_bids``) and then converted with :func:`brainfm.pipelines.convert.convert`:

========================  =======================  ==========================================
BIDS subject              source                   content
========================  =======================  ==========================================
``eegmatNN``              EEGMAT (Zyma 2019)       19 EEG @ 500 Hz; ``task-rest`` (180 s) and
                                                   ``task-arithmetic`` (60 s) per subject
``eegbci001``             EEGMMIDB S001            64 EEG @ 160 Hz; one task per paradigm,
                                                   ``run`` = the PhysioNet run number
``megsample``             MNE sample (Neuromag)    306 MEG + 60 EEG, stim events
``meg141027``             Neuromag excerpt         306 MEG @ 90 Hz, 10 s
``kitmq``, ``kitsqd``     KIT/Yokogawa excerpts    125 / 157 magnetometers @ 1 kHz, 2 s
``eeglab``                EEGLAB tutorial          32 EEG @ 128 Hz (no positions in the file)
``brainvision``           MNE BrainVision test     32 channels @ 1 kHz, markers
========================  =======================  ==========================================

EEGMAT and EEGMMIDB are fetched when missing (:mod:`brainfm.pipelines.fetch`); the MEG/EEG format
excerpts (the last five rows) are MNE test files that have no per-file download, so each one missing
under the data root is left out, with a warning naming it, and the rest of the sample is built.

EEGMAT channels are renamed from ``EEG Fp1`` to ``Fp1`` and its reference derivation
and ECG retyped (``misc``, ``ecg``), so channels.tsv is right; it is re-exported as EDF
(16-bit, error < 2 nV). Positions are *not* written for files that carry none: the
conversion fills them from the standard montage by name and records that it did.

A build is complete only when ``DEST/.brainfm-sample-store.json`` says so: it is removed when a
build starts and written when its conversion succeeded, so a build killed half-way (a first
``brainfm fit`` interrupted) is resumed by the next :func:`sample_store`, never trained on.
Builds hold ``DEST/.build.lock``, so two first uses wait for each other; the conversion prunes
recordings whose source left the sample (``sample-data`` with fewer subjects).

fMRI: with ``fmri`` (by default whenever ``formats`` is on, as ``brainfm sample-data`` runs), the
build then adds the BIDS ``func`` sample of :mod:`brainfm.pipelines.fmri_sample` under
``DEST/fmri`` (its own stores, ``fmri/store`` and ``fmri/store-roi``), after the EEG/MEG store is
marked complete, so it never delays or invalidates that store. Its failures join the report's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import filelock
import mne
from mne_bids import BIDSPath, write_raw_bids

from brainfm.data.root import data_root, default_sample_dir
from brainfm.pipelines import fetch, fmri_sample
from brainfm.pipelines.convert import ConversionReport, convert

EEGBCI_TASKS = {2: "restEC", 3: "execLR", 4: "imagLR", 5: "execFF", 6: "imagFF"}
EEGBCI_RUNS = tuple(range(2, 15))
_MARKER = ".brainfm-sample.json"
#: Written into DEST when the sample store is complete (see the module docstring).
_STORE_MARKER = ".brainfm-sample-store.json"

log = logging.getLogger(__name__)


def _eegbci_task(run: int) -> str:
    return EEGBCI_TASKS[run] if run in EEGBCI_TASKS else EEGBCI_TASKS[3 + (run - 3) % 4]


def _write(raw: mne.io.BaseRaw, path: BIDSPath, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mne-bids notes on units/anonymisation; not errors
        write_raw_bids(raw, path, overwrite=True, verbose="error", **kwargs)


def _eegmat(root: Path, subjects: Sequence[int]) -> None:
    files = fetch.fetch_eegmat(subjects)
    for f in files:
        subject, cond = f.stem.removeprefix("Subject").split("_")
        raw = mne.io.read_raw_edf(f, preload=True, verbose="error")
        raw.rename_channels({n: n.removeprefix("EEG ") for n in raw.ch_names if n.startswith("EEG ") and n != "EEG A2-A1"})
        raw.rename_channels({"ECG ECG": "ECG"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "unit changed from V to NA" for misc
            raw.set_channel_types({"EEG A2-A1": "misc", "ECG": "ecg"})
        raw.set_annotations(None)  # the only annotation is the EDF+ header's "[Total time]"
        raw.info["line_freq"] = 50.0  # recorded in Kyiv
        task = "rest" if cond == "1" else "arithmetic"
        path = BIDSPath(subject=f"eegmat{subject}", task=task, datatype="eeg", root=root)
        _write(raw, path, format="EDF", allow_preload=True)


def _eegbci(root: Path, runs: Sequence[int]) -> None:
    from mne.datasets import eegbci  # noqa: PLC0415

    for run, f in zip(runs, fetch.fetch_eegbci(1, runs)):
        raw = mne.io.read_raw_edf(f, preload=True, verbose="error")
        eegbci.standardize(raw)
        raw.info["line_freq"] = 60.0  # BCI2000 recordings, New York
        path = BIDSPath(subject="eegbci001", task=_eegbci_task(run), run=run, datatype="eeg", root=root)
        _write(raw, path, format="EDF", allow_preload=True)


def _formats(root: Path, excerpts: Sequence[str]) -> None:
    """The MEG and EEG-format excerpts, copied as they are (mne-bids copies FIF/KIT/EEGLAB/BV);
    only ``excerpts`` (paths of :data:`brainfm.pipelines.fetch.FORMAT_EXCERPTS`) are written."""
    if "meg/neuromag/test_raw.fif" in excerpts:
        raw = mne.io.read_raw_fif(fetch.local_file("meg/neuromag/test_raw.fif"), verbose="error")
        raw.info["line_freq"] = 60.0  # MGH, Boston
        events = mne.find_events(raw, stim_channel="STI 014", verbose="error")
        event_id = {"auditory/left": 1, "auditory/right": 2, "visual/left": 3, "visual/right": 4, "smiley": 5,
                    "button": 32}
        event_id = {k: v for k, v in event_id.items() if v in set(events[:, 2])}
        _write(raw, BIDSPath(subject="megsample", task="audvis", run=1, datatype="meg", root=root),
               events=events, event_id=event_id)
    if "meg/neuromag/sample_audvis_trunc_raw_sss.fif" in excerpts:
        raw = mne.io.read_raw_fif(fetch.local_file("meg/neuromag/sample_audvis_trunc_raw_sss.fif"), verbose="error")
        raw.info["line_freq"] = 60.0
        _write(raw, BIDSPath(subject="megsample", task="audvis", run=2, processing="sss", datatype="meg", root=root))
    if "meg/neuromag/141027_cropped_90Hz_raw.fif" in excerpts:
        raw = mne.io.read_raw_fif(fetch.local_file("meg/neuromag/141027_cropped_90Hz_raw.fif"), verbose="error")
        _write(raw, BIDSPath(subject="meg141027", task="rest", datatype="meg", root=root))
    for subject, name in (("kitmq", "MQKIT_125_2sec.con"), ("kitsqd", "test.sqd")):
        if f"meg/kit/{name}" in excerpts:
            raw = mne.io.read_raw_kit(fetch.local_file(f"meg/kit/{name}"), verbose="error")
            _write(raw, BIDSPath(subject=subject, task="rest", datatype="meg", root=root))
    if "eeg/eeglab/test_raw.set" in excerpts:
        raw = mne.io.read_raw_eeglab(fetch.local_file("eeg/eeglab/test_raw.set"), verbose="error")
        _write(raw, BIDSPath(subject="eeglab", task="tutorial", datatype="eeg", root=root))
    if "eeg/brainvision/test.vhdr" in excerpts:
        raw = mne.io.read_raw_brainvision(fetch.local_file("eeg/brainvision/test.vhdr"), verbose="error")
        raw.info["line_freq"] = 50.0
        _write(raw, BIDSPath(subject="brainvision", task="test", datatype="eeg", root=root))


def _excerpts(formats: bool) -> list[str]:
    """The format excerpts the sample includes: those under the data root. The missing ones are
    left out (logged by :func:`build_sample_bids`, with where to get them), so the sample builds on
    a machine that has only the fetchable recordings."""
    if not formats:
        return []
    missing = set(fetch.missing_excerpts())
    return [rel for rel in fetch.FORMAT_EXCERPTS if rel not in missing]


def _config(eegmat_subjects: Sequence[int], eegbci_runs: Sequence[int], formats: bool) -> dict[str, Any]:
    """What a built sample holds; a sample built with another config is rebuilt (the excerpts
    present under the data root are part of it, so copying one there rebuilds the sample)."""
    return {"eegmat_subjects": [int(s) for s in eegmat_subjects],
            "eegbci_runs": [int(r) for r in eegbci_runs], "formats": bool(formats), "excerpts": _excerpts(formats),
            "version": 2}


def build_sample_bids(
    dest: str | Path,
    eegmat_subjects: Sequence[int] = fetch.EEGMAT_SUBJECTS,
    eegbci_runs: Sequence[int] = EEGBCI_RUNS,
    formats: bool = True,
) -> Path:
    """Write the sample BIDS dataset to ``dest`` (atomically; reused when up to date)."""
    dest = Path(dest)
    config = _config(eegmat_subjects, eegbci_runs, formats)
    marker = dest / _MARKER
    if marker.exists() and json.loads(marker.read_text()) == config:
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _eegmat(tmp, eegmat_subjects)
    if eegbci_runs:
        _eegbci(tmp, eegbci_runs)
    left_out = [rel for rel in fetch.FORMAT_EXCERPTS if rel not in config["excerpts"]] if formats else []
    if left_out:
        log.warning("sample: %d of %d MEG/EEG format excerpts are not under the data root %s and are left out "
                    "(%s). They are files of MNE's testing data (mne.datasets.testing.data_path()); copy them "
                    "there to include them.", len(left_out), len(fetch.FORMAT_EXCERPTS), data_root(),
                    ", ".join(left_out))
    if config["excerpts"]:
        _formats(tmp, config["excerpts"])
    (tmp / _MARKER).write_text(json.dumps(config))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def build_sample(
    dest: str | Path | None = None,
    eegmat_subjects: Sequence[int] = fetch.EEGMAT_SUBJECTS,
    eegbci_runs: Sequence[int] = EEGBCI_RUNS,
    formats: bool = True,
    workers: int | None = None,
    progress: bool = True,
    fmri: bool | None = None,
) -> tuple[Path, ConversionReport]:
    """Build ``DEST/bids`` and convert it into ``DEST/store``; returns the store and report.

    Resumes an interrupted build; the store is marked complete only when every recording
    converted (see the module docstring). ``fmri`` (default: ``formats``) also builds the fMRI
    sample under ``DEST/fmri``; its failures are added to the report's ``failed``.
    """
    dest = Path(dest) if dest is not None else default_sample_dir()
    dest.mkdir(parents=True, exist_ok=True)
    config = _config(eegmat_subjects, eegbci_runs, formats)
    with filelock.FileLock(dest / ".build.lock"):
        (dest / _STORE_MARKER).unlink(missing_ok=True)
        bids = build_sample_bids(dest / "bids", eegmat_subjects, eegbci_runs, formats)
        store = dest / "store"
        report = convert(bids, store, "eeg-fm", workers=workers, progress=progress, prune=True, wait=None)
        if report.ok:
            tmp = dest / f"{_STORE_MARKER}.{os.getpid()}"
            tmp.write_text(json.dumps({**config, "recordings": len(report.converted) + len(report.skipped)}))
            tmp.replace(dest / _STORE_MARKER)
        if formats if fmri is None else fmri:
            _, fmri_reports = fmri_sample.build_fmri_sample(dest / "fmri", progress=progress)
            for extra in fmri_reports:
                report.failed += [{**f, "source": f"fmri/{f['source']}"} for f in extra.failed]
    return store, report


def sample_complete(dest: str | Path, config: dict[str, Any]) -> bool:
    """Whether ``DEST/store`` is a complete sample store built with ``config``."""
    try:
        done = json.loads((Path(dest) / _STORE_MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return {k: v for k, v in done.items() if k != "recordings"} == config


def sample_store(dest: str | Path | None = None, **kwargs) -> Path:
    """The default sample store, built on first use and completed if a build was interrupted."""
    dest = Path(dest) if dest is not None else default_sample_dir()
    config = _config(kwargs.get("eegmat_subjects", fetch.EEGMAT_SUBJECTS), kwargs.get("eegbci_runs", EEGBCI_RUNS),
                     kwargs.get("formats", True))
    store = dest / "store"
    if not sample_complete(dest, config):
        store, report = build_sample(dest, **kwargs)
        if not report.ok:
            raise RuntimeError(
                f"the sample store {store} is incomplete: {len(report.failed)} recording(s) failed to convert "
                f"(first: {report.failed[0]['source']}: {report.failed[0]['error']}); see {store}/reports"
            )
    return store


__all__ = ["build_sample", "build_sample_bids", "sample_complete", "sample_store"]
