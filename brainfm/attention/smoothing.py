"""Temporal smoothing of state probabilities: an HMM forward filter, minimum dwell and hysteresis.

The filter (Rabiner 1989, the forward recursion) treats the state model's probabilities as
emission likelihoods and a "sticky" transition matrix (``stay`` on the diagonal, the rest
spread evenly) as the prior: ``p_t ∝ l_t ⊙ (Aᵀ p_{t-1})``. It is causal, so the live and
offline detectors give the same sequence.

The *reported* state changes only when another state has led the filtered posterior by at
least ``hysteresis`` for ``min_dwell`` consecutive windows; that is the minimum dwell time
(``min_dwell × hop``) that keeps an adaptive interface from flickering. Windows the quality
gate refuses are not fed to the filter (:meth:`HmmSmoother.hold`): the belief is kept, and
the detector reports ``signal-bad`` for them.

Rabiner, L. R. (1989). A tutorial on hidden Markov models and selected applications in
speech recognition. Proceedings of the IEEE, 77(2), 257-286.
"""

from __future__ import annotations

import numpy as np


class HmmSmoother:
    """Causal HMM filter with dwell and hysteresis over ``n_states`` states.

    Parameters
    ----------
    n_states : int
    stay : float
        Self-transition probability per window.
    min_dwell : int
        Windows a new state must lead before it is reported.
    hysteresis : float
        Margin of posterior probability by which it must lead.
    """

    def __init__(self, n_states: int, stay: float = 0.9, min_dwell: int = 4, hysteresis: float = 0.1):
        if not 1.0 / n_states <= stay < 1.0:
            raise ValueError(f"stay must be in [1/{n_states}, 1), got {stay}")
        if min_dwell < 1 or not 0 <= hysteresis < 1:
            raise ValueError("min_dwell must be >= 1 and hysteresis in [0, 1)")
        off = (1.0 - stay) / max(n_states - 1, 1)
        self.transition = np.full((n_states, n_states), off) + np.eye(n_states) * (stay - off)  # (S, S)
        self.min_dwell, self.hysteresis = min_dwell, hysteresis
        self.reset()

    def reset(self) -> None:
        n = len(self.transition)
        self.posterior = np.full(n, 1.0 / n)
        self.current: int | None = None
        self._lead = 0

    def step(self, likelihood: np.ndarray) -> tuple[np.ndarray, int]:
        """Update with one window's state probabilities ``(S,)``; returns (posterior, reported index)."""
        prior = self.transition.T @ self.posterior
        post = prior * np.clip(likelihood, 1e-9, None)
        self.posterior = post / post.sum()
        best = int(np.argmax(self.posterior))
        if self.current is None:
            self.current = best
        elif best != self.current and self.posterior[best] >= self.posterior[self.current] + self.hysteresis:
            self._lead += 1
            if self._lead >= self.min_dwell:
                self.current, self._lead = best, 0
        else:
            self._lead = 0
        return self.posterior.copy(), self.current
