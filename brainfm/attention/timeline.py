"""A detector's timeline on disk (CSV or JSON) and as a figure.

CSV: one row per window, columns ``t, sample, state, p_<state>..., <index>..., engagement,
arousal, decoder, quality_ok, quality_reasons``. JSON: ``{"meta": {...}, "windows": [...]}``
with every :class:`~brainfm.attention.detector.StateOutput` in full.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the non-interactive backend

from brainfm.attention.detector import StateOutput  # noqa: E402
from brainfm.attention.indices import INDEX_NAMES  # noqa: E402
from brainfm.attention.states import CALIBRATING, SIGNAL_BAD  # noqa: E402

COLORS = {"Focused": "#2e7d32", "Drifting": "#f9a825", "Hyperfocused": "#6a1b9a", "Fatigued": "#1565c0",
          SIGNAL_BAD: "#c62828", CALIBRATING: "#9e9e9e"}


def write_csv(outputs: Sequence[StateOutput], path: str | Path, states: Sequence[str]) -> Path:
    """One row per window: time, state, state probabilities, the raw indices, the two axes
    (``engagement_axis``, ``arousal_axis``: per-user z-scores; the raw ``engagement`` index is Pope's
    β/(α+θ)), the decoder's log-odds and the signal quality."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t", "sample", "state", *(f"p_{s}" for s in states), *INDEX_NAMES, "engagement_axis",
                    "arousal_axis", "decoder", "quality_ok", "quality_reasons"])
        for o in outputs:
            w.writerow([f"{o.t:.3f}", o.sample, o.state, *(_fmt(o.probabilities.get(s)) for s in states),
                        *(_fmt(o.indices.get(k)) for k in INDEX_NAMES), _fmt(o.engagement), _fmt(o.arousal),
                        _fmt(o.decoder), int(o.quality["ok"]), ";".join(o.quality["reasons"])])
    return path


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def write_json(outputs: Sequence[StateOutput], path: str | Path, meta: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"meta": meta, "windows": [o.to_dict() for o in outputs]}, indent=1))
    return path


def plot_timeline(outputs: Sequence[StateOutput], path: str | Path, states: Sequence[str],
                  segments: Sequence[tuple[str, float, float]] = (), title: str = "") -> Path:
    """State ribbon, state probabilities, and the indices over time."""
    t = [o.t for o in outputs]
    fig, (ax_r, ax_p, ax_i) = plt.subplots(3, 1, figsize=(11, 6.5), sharex=True,
                                           gridspec_kw={"height_ratios": [0.6, 2, 2]})
    hop = (t[1] - t[0]) if len(t) > 1 else 1.0
    for o in outputs:
        ax_r.axvspan(o.t - hop, o.t, color=COLORS.get(o.state, "#444444"), lw=0)
    ax_r.set_yticks([])
    ax_r.set_ylabel("state")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS.get(s, "#444444")) for s in (*states, SIGNAL_BAD, CALIBRATING)]
    ax_r.legend(handles, [*states, SIGNAL_BAD, CALIBRATING], ncol=6, fontsize=7, loc="lower left",
                bbox_to_anchor=(0, 1.0), frameon=False)
    for s in states:
        ax_p.plot(t, [o.probabilities.get(s, float("nan")) for o in outputs], label=s, color=COLORS.get(s))
    ax_p.set_ylabel("P(state)")
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.legend(fontsize=7, loc="upper right")
    for k in ("engagement", "theta_beta", "delta_beta", "slowing"):
        ax_i.plot(t, [o.indices.get(k) if o.indices.get(k) is not None else float("nan") for o in outputs],
                  label=k, lw=0.9)
    ax_i.set_yscale("log")
    ax_i.set_ylabel("index")
    ax_i.set_xlabel("time (s)")
    ax_i.legend(fontsize=7, loc="upper right")
    for name, start, stop in segments:
        for ax in (ax_p, ax_i):
            ax.axvline(start, color="k", lw=0.6, ls=":")
        ax_i.text(start, ax_i.get_ylim()[0], f" {name}", fontsize=7, va="bottom")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
