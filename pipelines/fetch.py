"""Fetchers for the public recordings brainfm's sample and benchmarks use.

Each fetcher looks under the data root first (:func:`brainfm.data.root.data_root`)
and downloads from the original source only what is missing there, checking
SHA-256 sums either way:

* EEGMAT (Zyma et al. 2019, PhysioNet ``eegmat`` 1.0.0): :func:`fetch_eegmat`, with
  the checksums in ``eegmat_checksums.txt`` (PhysioNet publishes none; these were
  taken from verified copies).
* EEGMMIDB (Schalk et al. 2004): :func:`fetch_eegbci`, through MNE's own fetcher
  and its checksum list.
* The MEG/EEG format excerpts come from MNE's test data; :func:`local_file` finds
  them under the data root and says where to get them when missing.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from brainfm.data.root import data_root

EEGMAT_URL = "https://physionet.org/files/eegmat/1.0.0/"
EEGMAT_SUBJECTS = tuple(range(36))


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
