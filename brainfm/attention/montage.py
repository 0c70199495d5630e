"""Channel mapping: from the names a file or an LSL stream gives to 10-05 positions.

The documented mapping, applied to every name before it is looked up (case-insensitive) in
MNE's standard 10-05 montage (``colin27_1005`` on MNE >= 1.13, else ``standard_1005``):

1. strip a type prefix: ``"EEG Fp1"`` -> ``"Fp1"`` (EDF convention, EEGMAT);
2. strip a reference suffix: ``-REF``, ``-LE``, ``-RE``, ``-AVG``, ``-A1``, ``-A2``, ``-M1``,
   ``-M2`` (``"Cz-REF"`` -> ``"Cz"``); derivations between ear or mastoid sites (EEGMAT's
   ``"A2-A1"``) and other bipolar names do not map;
3. strip the trailing dots of BCI2000/EEGMMIDB names (``"Fc5."`` -> ``"Fc5"``);
4. old 10-20 names map to their 10-10 successors: T3 -> T7, T4 -> T8, T5 -> P7, T6 -> P8.

A channel whose mapped name is not in the montage has no position and is left out, with its
name in the message; if none is left the input is refused naming the file or stream.
"""

from __future__ import annotations

import functools
import re

import mne
import numpy as np

from brainfm.signal import SensorSpec

OLD_1020 = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
#: Ear and mastoid sites: references, not scalp EEG; a derivation between two of them maps to nothing.
REFERENCE_SITES = {"A1", "A2", "M1", "M2"}
_SUFFIX = re.compile(r"-(REF|LE|RE|AVG|A1|A2|M1|M2)$", re.IGNORECASE)


def canonical_name(name: str) -> str:
    """The mapped name of one channel (see the module docstring)."""
    name = name.strip()
    for prefix in ("EEG ", "EEG-", "EEG_"):
        if name.upper().startswith(prefix):
            name = name[len(prefix):]
            break
    if "-" in name and all(part.upper() in REFERENCE_SITES for part in name.split("-")):
        return name  # e.g. EEGMAT's "A2-A1": a reference derivation, not in the montage
    name = _SUFFIX.sub("", name).rstrip(".")
    return OLD_1020.get(name.upper() if name.upper() in OLD_1020 else name, name)


@functools.lru_cache(maxsize=1)
def _positions() -> dict[str, np.ndarray]:
    """Montage positions in MNE's head frame, as ``brainfm convert`` stores them: ``set_montage``
    moves the montage into the frame its fiducials define. (``montage.get_positions()`` gives
    the template's own frame, 4.6 cm away at Fp1, so live windows would reach the tokenizer at
    positions the model was never trained on.)"""
    name = "colin27_1005" if "colin27_1005" in mne.channels.get_builtin_montages() else "standard_1005"
    montage = mne.channels.make_standard_montage(name)
    info = mne.create_info(montage.ch_names, 1.0, "eeg")
    info.set_montage(montage, verbose="error")
    return {ch["ch_name"].upper(): np.array(ch["loc"][:3], dtype=np.float64) for ch in info["chs"]}


def eeg_spec(names: list[str], sfreq: float, source: str) -> tuple[SensorSpec, list[int], list[str]]:
    """A :class:`SensorSpec` of the channels of ``names`` that map to a 10-05 position.

    Returns ``(spec, kept indices into names, left-out names)``; ``source`` names the file or
    stream in the error raised when no channel maps.
    """
    positions = _positions()
    keep, locs, mapped, dropped = [], [], [], []
    for i, name in enumerate(names):
        canon = canonical_name(name)
        pos = positions.get(canon.upper())
        if pos is None or canon in mapped:
            dropped.append(name)
            continue
        loc = np.full(12, np.nan)
        loc[:3], loc[3:6] = pos, 0.0
        keep.append(i), locs.append(loc), mapped.append(canon)
    if not keep:
        raise ValueError(f"{source}: none of its channels maps to a 10-05 EEG position ({', '.join(names[:8])}"
                         f"{', ...' if len(names) > 8 else ''}); see brainfm.attention.montage for the mapping")
    spec = SensorSpec(mapped, ["eeg"] * len(mapped), np.stack(locs), sfreq)
    return spec, keep, dropped
