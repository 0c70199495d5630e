"""The state model: named regions of an engagement × arousal plane, with soft edges.

Both axes are per-user z-scores (:mod:`brainfm.attention.calibration`): 0 is the person's
own calibration baseline and 1 is one of their own standard deviations, so one set of
thresholds is per-user by construction; a person can still get their own thresholds
(:meth:`StateModel.with_thresholds`, ``--states FILE``).

A :class:`Region` is a rectangle ``[e_lo, e_hi) × [a_lo, a_hi)``. A point's membership of a
region is the product of four logistic edges of width ``softness``; memberships are
normalised over the states into probabilities, so a point deep inside a region gets
probability near 1 and a point on an edge is split. The regions of one model should tile
the plane (the default does), otherwise probability mass near gaps is spread thin.

The default, :func:`attention_guard`, maps AttentionGuard's four states (Focused, Drifting,
Hyperfocused, Fatigued; AttentionGuard 2026, from ADHD phenomenology) onto the plane with
the baseline taken at rest:

==============  ====================================  =======================================
state           region (z units)                      reading
==============  ====================================  =======================================
Fatigued        arousal < ``fatigue`` (-1.5)          slow EEG (δ/β up): drowsy, any task
Drifting        engagement < ``drift`` (0.5)          at or below resting engagement
Focused         ``drift`` <= engagement < ``hyper``    engaged above rest
Hyperfocused    engagement >= ``hyper`` (2.5)          far above the person's usual engagement
==============  ====================================  =======================================

(the last three for arousal >= ``fatigue``). Only parts of this are validated on labelled
EEG (``docs/attention.md``): Drifting against Focused on EEGMAT rest and arithmetic, and
Fatigued on sleep against resting wakefulness. Hyperfocused has no labelled EEG here; its
threshold is a mapping, not a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIGNAL_BAD = "signal-bad"
CALIBRATING = "calibrating"
INF = float("inf")


@dataclass(frozen=True)
class Region:
    """One state: a rectangle of the engagement × arousal plane (per-user z units)."""

    name: str
    engagement: tuple[float, float] = (-INF, INF)
    arousal: tuple[float, float] = (-INF, INF)
    description: str = ""

    def __post_init__(self) -> None:
        for axis in (self.engagement, self.arousal):
            if not axis[0] < axis[1]:
                raise ValueError(f"state {self.name!r}: an axis range must be (low, high) with low < high, got {axis}")


def _edge(v: np.ndarray, threshold: float, softness: float) -> np.ndarray:
    """Soft ``v >= threshold`` (1 above, 0 below); exactly 1 for an infinite lower edge."""
    if np.isinf(threshold):
        return np.ones_like(v) if threshold < 0 else np.zeros_like(v)
    return 1.0 / (1.0 + np.exp(-(v - threshold) / softness))


@dataclass(frozen=True)
class StateModel:
    """Probabilities of named states at points of the plane.

    Parameters
    ----------
    regions : tuple of Region
    softness : float
        Width (z units) of the logistic edges.
    """

    regions: tuple[Region, ...]
    softness: float = 0.3

    def __post_init__(self) -> None:
        names = [r.name for r in self.regions]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"a state model needs at least two uniquely named states, got {names}")
        if SIGNAL_BAD in names or CALIBRATING in names:
            raise ValueError(f"{SIGNAL_BAD!r} and {CALIBRATING!r} are reserved state names")
        if self.softness <= 0:
            raise ValueError("softness must be > 0")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def probabilities(self, engagement: float, arousal: float) -> np.ndarray:
        """State probabilities ``(S,)`` at one point."""
        e, a, s = np.float64(engagement), np.float64(arousal), self.softness
        m = np.array([_edge(e, r.engagement[0], s) * (1 - _edge(e, r.engagement[1], s))
                      * _edge(a, r.arousal[0], s) * (1 - _edge(a, r.arousal[1], s)) for r in self.regions])
        total = m.sum()
        return m / total if total > 0 else np.full(len(m), 1.0 / len(m))

    def with_thresholds(self, **thresholds: float) -> "StateModel":
        """The default model's regions with new thresholds (only for :func:`attention_guard` models)."""
        return attention_guard(**thresholds, softness=self.softness)

    def to_dict(self) -> dict:
        return {"softness": self.softness, "states": [
            {"name": r.name, "engagement": list(r.engagement), "arousal": list(r.arousal),
             "description": r.description} for r in self.regions]}

    @classmethod
    def from_dict(cls, d: dict) -> "StateModel":
        try:
            regions = tuple(Region(s["name"], tuple(map(float, s.get("engagement", (-INF, INF)))),
                                   tuple(map(float, s.get("arousal", (-INF, INF)))), s.get("description", ""))
                            for s in d["states"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"a state set needs 'states': [{{'name', 'engagement': [lo, hi], "
                             f"'arousal': [lo, hi]}}, ...] ({err})") from None
        return cls(regions, float(d.get("softness", 0.3)))

    @classmethod
    def from_file(cls, path: str | Path) -> "StateModel":
        """A state set from JSON (``null`` or ``±Infinity`` for open edges)."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"state set {path}: {err}") from None
        for s in doc.get("states", []):
            for axis in ("engagement", "arousal"):
                if axis in s:
                    s[axis] = [(-INF if i == 0 else INF) if v is None else v for i, v in enumerate(s[axis])]
        try:
            return cls.from_dict(doc)
        except ValueError as err:
            raise ValueError(f"state set {path}: {err}") from None


def attention_guard(drift: float = 0.5, hyper: float = 2.5, fatigue: float = -1.5,
                    softness: float = 0.3) -> StateModel:
    """AttentionGuard's four states as regions of the plane (see the module docstring)."""
    if not drift < hyper:
        raise ValueError(f"drift ({drift}) must be below hyper ({hyper})")
    awake = (fatigue, INF)
    return StateModel((
        Region("Focused", (drift, hyper), awake, "engaged above the person's resting baseline"),
        Region("Drifting", (-INF, drift), awake, "engagement at or below rest"),
        Region("Hyperfocused", (hyper, INF), awake, "engagement far above the person's usual range"),
        Region("Fatigued", (-INF, INF), (-INF, fatigue), "slowed EEG: drowsiness"),
    ), softness)
