"""Sliding windows over a stream of samples: a fixed-size ring buffer, shared by offline and live.

Window ``k`` ends at sample ``window_n + k · hop_n`` of the stream (counted from its first
sample), whatever the chunk sizes it arrives in, so the live detector sees exactly the
windows ``brainfm detect`` cuts from the same samples. Memory is one window per plane.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class Windower:
    """Ring buffer of ``planes`` signals ``(C, window_n)`` that yields each complete window.

    Parameters
    ----------
    n_channels, window_n, hop_n : int
    planes : int
        Parallel signals kept (the raw and the filtered stream).
    """

    def __init__(self, n_channels: int, window_n: int, hop_n: int, planes: int = 2):
        if window_n < 1 or hop_n < 1:
            raise ValueError(f"window ({window_n}) and hop ({hop_n}) must be at least one sample")
        self.buffer = np.zeros((planes, n_channels, window_n))  # (P, C, N), circular in N
        self.window_n, self.hop_n = window_n, hop_n
        self.total = 0  # samples seen
        self.next_end = window_n

    def feed(self, *chunks: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        """Add one chunk per plane (each ``(C, n)``); yield ``(window (P, C, window_n), end sample)``."""
        n, pos = chunks[0].shape[1], 0
        while pos < n:
            take = min(n - pos, self.next_end - self.total, self.window_n)
            start = self.total % self.window_n
            first = min(take, self.window_n - start)
            for p, chunk in enumerate(chunks):
                self.buffer[p, :, start:start + first] = chunk[:, pos:pos + first]
                self.buffer[p, :, :take - first] = chunk[:, pos + first:pos + take]
            self.total += take
            pos += take
            if self.total == self.next_end:
                head = self.total % self.window_n
                yield np.concatenate([self.buffer[:, :, head:], self.buffer[:, :, :head]], axis=2), self.total
                self.next_end += self.hop_n
