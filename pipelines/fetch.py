"""Fetchers for the public recordings brainfm's sample and benchmarks use.

Each fetcher looks under the data root first (:func:`brainfm.data.root.data_root`)
and downloads from the original source only what is missing there, checking
SHA-256 sums either way:

* EEGMAT (Zyma et al. 2019, PhysioNet ``eegmat`` 1.0.0): :func:`fetch_eegmat`, with
  the checksums in ``eegmat_checksums.txt`` (PhysioNet publishes none; these were
  taken from verified copies).
* EEGMMIDB (Schalk et al. 2004): :func:`fetch_eegbci`, through MNE's own fetcher
  and its checksum list.
* The fMRI sample (:func:`fetch_fmri`): nitime's four example files, taken from nitime's wheel
  on PyPI (one pinned wheel, SHA-256-checked; nitime is not installed), and nibabel's
  ``example4d.nii.gz``, which ships with nibabel.
* The MEG/EEG format excerpts (:data:`FORMAT_EXCERPTS`) come from MNE's test data, which has no
  per-file download (``mne.datasets.testing`` fetches the whole testing dataset), so they are not
  downloaded: :func:`local_file` finds them under the data root, and the sample is built
  without the ones that are missing (:func:`missing_excerpts`).
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from importlib import resources
from pathlib import Path

import nibabel.testing

from brainfm.data.root import data_root

EEGMAT_URL = "https://physionet.org/files/eegmat/1.0.0/"
EEGMAT_SUBJECTS = tuple(range(36))
#: nitime 0.12.1's wheel for CPython 3.11 on x86-64 Linux: any nitime wheel holds ``nitime/data/``;
#: only those files are read from it, so the platform does not matter.
NITIME_WHEEL_URL = ("https://files.pythonhosted.org/packages/88/5d/ae275feedaa6590cf6e185cfeb7c4d28b5e1a10fcb492fd5340b"
                    "07921675/nitime-0.12.1-cp311-abi3-manylinux1_x86_64.manylinux_2_28_x86_64.manylinux_2_5_x86_64.whl")
NITIME_WHEEL_SHA256 = "19442111829b94fa9aa9849bdfb6aa92bc5467ba74194b18450728e432086882"
#: The fMRI sample files (``fmri/`` under the data root) and their SHA-256; all but ``example4d``
#: are nitime's (``nitime/data/``), ``example4d`` is nibabel's test image.
FMRI_FILES = {
    "fmri1.nii.gz": "473b394d20815b9982341877f1ee3e6a29e3b722f01ff045bf5a3fca2f9d66fe",
    "fmri2.nii.gz": "d89a16f4e17d55b1d08faa6f4a024aab067d8ab4571fe9fb2eaa1634b45cc618",
    "fmri_timeseries.csv": "b272a7a8e1981d1b4542e739e5244be41c1bfee8a8d3cd224b87605ec72c2ffd",
    "event_related_fmri.csv": "f0517820de8a8c8e94373f4c4186ea347e0fcbc7000f94a332534ed646dbe07b",
    "example4d.nii.gz": "42097dfbab9d2a036b41ae5c97a359591cf2cf5c3f8dc6ca6455c0b8a7f22696",
}
#: The MEG/EEG format excerpts of the sample, relative to the data root (MNE's test data).
FORMAT_EXCERPTS = (
    "meg/neuromag/test_raw.fif",
    "meg/neuromag/sample_audvis_trunc_raw_sss.fif",
    "meg/neuromag/141027_cropped_90Hz_raw.fif",
    "meg/kit/MQKIT_125_2sec.con",
    "meg/kit/test.sqd",
    "eeg/eeglab/test_raw.set",
    "eeg/brainvision/test.vhdr",
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def eegmat_checksums() -> dict[str, str]:
    text = resources.files("brainfm.pipelines").joinpath("eegmat_checksums.txt").read_text()
    return {name: digest for digest, name in (line.split() for line in text.splitlines() if line.strip())}


def fetch_eegmat(subjects=EEGMAT_SUBJECTS, path: str | Path | None = None) -> list[Path]:
    """Paths of EEGMAT EDF files ``Subject{NN}_{1,2}.edf`` for ``subjects``.

    Files found under ``path`` (default ``DATA_ROOT/eegmat``) with the right checksum
    are used as they are; missing ones are downloaded from PhysioNet with pooch and
    verified. A local file with a wrong checksum is an error, never silently replaced.
    """
    folder = Path(path) if path is not None else data_root() / "eegmat"
    sums = eegmat_checksums()
    out = []
    for subject in subjects:
        if subject not in EEGMAT_SUBJECTS:
            raise ValueError(f"EEGMAT has subjects 0-35, not {subject}")
        for cond in (1, 2):
            name = f"Subject{subject:02d}_{cond}.edf"
            local = folder / name
            if local.exists():
                if _sha256(local) != sums[name]:
                    raise OSError(f"{local} does not match its SHA-256; re-download it")
                out.append(local)
                continue
            import pooch  # noqa: PLC0415 - only needed when downloading

            out.append(
                Path(pooch.retrieve(EEGMAT_URL + name, known_hash=f"sha256:{sums[name]}", fname=name, path=folder))
            )
    return out


def fetch_eegbci(subject: int = 1, runs=(4, 8, 12), path: str | Path | None = None) -> list[Path]:
    """EEGMMIDB EDF files through ``mne.datasets.eegbci.load_data`` (hash-checked)."""
    from mne.datasets import eegbci  # noqa: PLC0415

    folder = Path(path) if path is not None else data_root() / "eegbci"
    return [Path(p) for p in eegbci.load_data(subject, list(runs), path=folder, update_path=False)]


def local_file(relative: str) -> Path:
    """A file under the data root, with a clear error when it is missing."""
    path = data_root() / relative
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing. It is part of MNE's test data "
            "(mne.datasets.testing.data_path()); copy it there or set BRAINFM_DATA."
        )
    return path


def missing_excerpts() -> list[str]:
    """The :data:`FORMAT_EXCERPTS` not under the data root (the sample is built without them)."""
    root = data_root()
    return [rel for rel in FORMAT_EXCERPTS if not (root / rel).exists()]


def fetch_fmri(path: str | Path | None = None) -> Path:
    """The folder of the fMRI sample files (:data:`FMRI_FILES`), completed and verified.

    Files found under ``path`` (default ``DATA_ROOT/fmri``) are used as they are; missing nitime
    files are extracted from nitime's wheel, downloaded once with pooch (:data:`NITIME_WHEEL_URL`,
    hash-checked), and ``example4d.nii.gz`` is copied from the installed nibabel. Every file is
    then checked against its SHA-256; a local file with a wrong checksum is an error, never
    silently replaced.
    """
    folder = Path(path) if path is not None else data_root() / "fmri"
    missing = [name for name in FMRI_FILES if not (folder / name).exists()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
    from_wheel = [name for name in missing if name != "example4d.nii.gz"]
    if from_wheel:
        import pooch  # noqa: PLC0415 - only needed when downloading

        wheel = pooch.retrieve(NITIME_WHEEL_URL, known_hash=f"sha256:{NITIME_WHEEL_SHA256}",
                               fname=NITIME_WHEEL_URL.rsplit("/", 1)[-1], path=folder / ".download")
        with zipfile.ZipFile(wheel) as archive:
            for name in from_wheel:
                _write_new(folder / name, archive.read(f"nitime/data/{name}"))
    if "example4d.nii.gz" in missing:
        _write_new(folder / "example4d.nii.gz", (Path(nibabel.testing.data_path) / "example4d.nii.gz").read_bytes())
    for name, digest in FMRI_FILES.items():
        if _sha256(folder / name) != digest:
            raise OSError(f"{folder / name} does not match its SHA-256; delete it to fetch it again")
    shutil.rmtree(folder / ".download", ignore_errors=True)
    return folder


def _write_new(path: Path, body: bytes) -> None:
    """Write ``path`` through a temporary name, so an interrupted fetch leaves no partial file."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(body)
    tmp.replace(path)
