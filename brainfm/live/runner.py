"""The live loop: pull from StreamLSL, filter causally, window, detect, publish.

Per poll (every ``poll_s``), the samples that arrived since the last poll are taken from the
StreamLSL buffer by timestamp (newer than the last one seen: nothing is read twice or
skipped, whatever the acquisition thread did in between), converted to µV, filtered by the
:class:`~brainfm.attention.CausalChain` and fed to the :class:`~brainfm.attention.Windower`;
each complete window goes through :meth:`AttentionDetector.step`. A decision's ``t`` is the
LSL timestamp of the window's last sample, and ``latency_ms`` is the time from that
timestamp to publication.

Faults:

* **stream stops**: no new sample for ``stale_s`` (0.5 s) -> a ``signal-bad`` decision with
  reason ``no-data``, repeated every hop while it lasts; when samples come back, the filter
  and the window restart (no window straddles the gap) and the baseline, smoother and
  outputs carry on, without a restart;
* **timestamps jump** back (a restarted source) or forward by more than ``gap_s``: treated as
  a gap, like a stop;
* **wrong rate**: the rate measured from the timestamps over the last seconds is compared with
  the declared one; more than 10 % off -> ``signal-bad`` with reason ``rate``;
* **NaN bursts**: held before the filter, flagged by the quality gate (``nan``);
* **SIGINT / SIGTERM**: the loop stops after the current poll, outputs are flushed and closed.

Memory: the StreamLSL buffer (``bufsize`` s), one window per plane, bounded dashboard queues.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from mne_lsl.lsl import local_clock

from brainfm.attention import AttentionDetector, CausalChain, DetectorConfig, EngagementModel, Windower
from brainfm.attention.quality import Quality
from brainfm.attention.states import SIGNAL_BAD
from brainfm.live.source import StreamInput

RATE_TOLERANCE = 0.10


@dataclass
class LiveStats:
    """Counters of a run (what ``brainfm stream`` prints at the end)."""

    windows: int = 0
    samples: int = 0
    no_data: int = 0
    gaps: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=10000))
    compute_ms: deque = field(default_factory=lambda: deque(maxlen=10000))
    compute_cpu_ms: deque = field(default_factory=lambda: deque(maxlen=10000))  # thread CPU time of a step

    def summary(self) -> dict:
        def pct(values, q):
            return float(np.percentile(values, q)) if values else None
        return {"windows": self.windows, "samples": self.samples, "no_data": self.no_data, "gaps": self.gaps,
                "latency_ms_p50": pct(self.latencies_ms, 50), "latency_ms_p99": pct(self.latencies_ms, 99),
                "compute_ms_p50": pct(self.compute_ms, 50), "compute_ms_p99": pct(self.compute_ms, 99),
                "compute_cpu_ms_p50": pct(self.compute_cpu_ms, 50), "compute_cpu_ms_p99": pct(self.compute_cpu_ms, 99)}


class LiveDetector:
    """Run the detector on a checked stream and send each decision to ``sinks``.

    Parameters
    ----------
    source : StreamInput
    config : DetectorConfig
    model : EngagementModel, optional
    detector : AttentionDetector, optional
        An already calibrated detector (:meth:`AttentionDetector.calibrate_on`) for the stream's
        channels; default: a new one that calibrates on the stream's first ``calibration_s``.
    sinks : list
        Objects with ``publish(record: dict)`` and ``close()``.
    overrides : OverrideLog, optional
        Applied to every record before the sinks see it.
    """

    def __init__(self, source: StreamInput, config: DetectorConfig, model: EngagementModel | None = None,
                 sinks=(), overrides=None, stale_s: float = 0.5, gap_s: float = 0.25, poll_s: float = 0.01,
                 detector: AttentionDetector | None = None):
        self.source, self.config, self.sinks, self.overrides = source, config, list(sinks), overrides
        self.stale_s, self.gap_s, self.poll_s = stale_s, gap_s, poll_s
        self.detector = detector or AttentionDetector(source.spec, config, model)
        self.stats = LiveStats()
        self.stop_event = threading.Event()
        self.last_ts = -np.inf
        self.last_arrival = time.monotonic()
        self.recent: deque = deque(maxlen=64)  # (timestamp, samples) of recent pulls, for the rate check
        self._restart()

    def _restart(self) -> None:
        spec = self.source.spec
        self.chain = CausalChain(spec.sfreq, spec.n_channels, self.config.line_freq)
        self.windower = Windower(spec.n_channels, self.detector.window_n, self.detector.hop_n)
        self.recent.clear()

    def _publish(self, record: dict) -> None:
        if self.overrides is not None:
            record = self.overrides.apply(record)
        for sink in self.sinks:
            sink.publish(record)

    def _pull(self) -> tuple[np.ndarray, np.ndarray]:
        data, ts = self.source.stream.get_data()
        new = (ts > self.last_ts) & (ts > 0)  # StreamLSL's buffer starts as zeros with timestamp 0
        if not new.any() and ts.size and ts[-1] < self.last_ts - self.gap_s and ts[-1] > 0:
            # the source's clock went back: take what came after the jump
            jump = np.flatnonzero(np.diff(ts) < 0)
            new = np.arange(ts.size) > (jump[-1] if jump.size else -1)
            self.stats.gaps += 1
            self._restart()
        return data[:, new], ts[new]

    def _rate_ok(self, ts: np.ndarray) -> bool:
        self.recent.append((ts[-1], ts.size))
        if len(self.recent) < 8:
            return True
        span = self.recent[-1][0] - self.recent[0][0]
        count = sum(n for _, n in list(self.recent)[1:])
        return span <= 0 or abs(count / span - self.source.spec.sfreq) <= RATE_TOLERANCE * self.source.spec.sfreq

    def poll(self) -> int:
        """One pull: process what arrived; returns the number of decisions published."""
        data, ts = self._pull()
        now = time.monotonic()
        published = 0
        if ts.size == 0:
            if now - self.last_arrival >= self.stale_s:
                self.stats.no_data += 1
                record = self.detector._output(local_clock(), self.windower.total, SIGNAL_BAD,
                                               Quality(False, ("no-data",))).to_dict()
                self._publish(record)
                self.last_arrival = now + self.config.hop_s - self.stale_s  # repeat every hop
                self._stale = True
                published += 1
            return published
        if getattr(self, "_stale", False) or ts[0] - self.last_ts > self.gap_s and np.isfinite(self.last_ts):
            self.stats.gaps += 1
            self._restart()
        self._stale = False
        self.last_arrival, self.last_ts = now, float(ts[-1])
        self.stats.samples += ts.size
        rate_ok = self._rate_ok(ts)
        x = data[self.source.picks] * self.source.scale  # (C, n) µV
        start = self.windower.total
        for window, end in self.windower.feed(x, self.chain.process(x)):
            t = float(ts[end - start - 1])
            tic, tic_cpu = time.perf_counter(), time.thread_time()
            out = self.detector.step(window[0], window[1], t, end)
            if not rate_ok:
                out = self.detector._output(t, end, SIGNAL_BAD, Quality(False, ("rate",)))
            record = out.to_dict()
            self.stats.compute_ms.append((time.perf_counter() - tic) * 1e3)
            self.stats.compute_cpu_ms.append((time.thread_time() - tic_cpu) * 1e3)
            record["latency_ms"] = (local_clock() - t) * 1e3
            self.stats.latencies_ms.append(record["latency_ms"])
            self._publish(record)
            self.stats.windows += 1
            published += 1
        return published

    def run(self, duration: float | None = None, max_windows: int | None = None, handle_signals: bool = True) -> dict:
        """Poll until stopped (SIGINT/SIGTERM, :attr:`stop_event`, ``duration`` s or ``max_windows``)."""
        previous = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self.stop_event.set())
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not self.stop_event.is_set():
                self.poll()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if max_windows is not None and self.stats.windows >= max_windows:
                    break
                time.sleep(self.poll_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sink in self.sinks:
                sink.close()
        return self.stats.summary()
