"""Where live decisions go: an LSL outlet of states, JSON lines, and override logging.

``StateOutlet``
    An LSL stream (type ``AttentionState``, irregular rate, one string channel) whose samples
    are the decision as JSON, timestamped with the window's last sample, for adaptive
    interfaces to subscribe to.
``JsonLines``
    One JSON object per window, flushed at every line, so an interrupted run loses nothing.
``OverrideLog``
    The person's overrides (dashboard) beside the automatic decisions, per window, and their
    agreement: the fraction of overridden windows where the detector said the same.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import IO

from mne_lsl.lsl import StreamInfo, StreamOutlet


class StateOutlet:
    def __init__(self, name: str = "brainfm-attention"):
        info = StreamInfo(name, "AttentionState", 1, 0.0, "string", f"{name}-states")
        self.outlet = StreamOutlet(info)

    def publish(self, record: dict) -> None:
        self.outlet.push_sample([json.dumps(record)], timestamp=record["t"])

    def close(self) -> None:
        del self.outlet


class JsonLines:
    def __init__(self, target: str | Path | IO[str]):
        self.fh = open(target, "a") if isinstance(target, (str, Path)) else target  # noqa: SIM115
        self.owned = isinstance(target, (str, Path))

    def publish(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.flush()
        if self.owned:
            self.fh.close()


class OverrideLog:
    """The current human override and its log beside the automatic decisions."""

    def __init__(self, states: tuple[str, ...], path: str | Path | None = None):
        self.states = states
        self.current: str | None = None
        self.lock = threading.Lock()
        self.overridden = self.agreed = 0
        self.events: list[dict] = []  # the person's actions (few), kept whole
        self.fh = open(path, "a") if path else None  # noqa: SIM115

    def set(self, state: str | None, t: float | None = None) -> None:
        if state is not None and state not in self.states:
            raise ValueError(f"unknown state {state!r}; states are {list(self.states)}")
        with self.lock:
            self.current = state
            self.events.append({"t": t, "override": state})
            if self.fh:
                self.fh.write(json.dumps({"event": "override", "t": t, "state": state}) + "\n")
                self.fh.flush()

    def apply(self, record: dict) -> dict:
        """Add ``automatic``, ``override`` and the published ``state`` to a decision record."""
        with self.lock:
            human = self.current
            record["automatic"], record["override"] = record["state"], human
            if human is not None:
                record["state"] = human
                if record["automatic"] in self.states:
                    self.overridden += 1
                    self.agreed += record["automatic"] == human
                if self.fh:
                    self.fh.write(json.dumps({"event": "window", "t": record["t"], "automatic": record["automatic"],
                                              "human": human}) + "\n")
                    self.fh.flush()
        return record

    def summary(self) -> dict:
        with self.lock:
            return {"override": self.current, "overridden_windows": self.overridden,
                    "agreement": self.agreed / self.overridden if self.overridden else None,
                    "events": len(self.events)}

    def close(self) -> None:
        if self.fh:
            self.fh.close()
