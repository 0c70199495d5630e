"""Issue #12's targets against what ``docs/results.json`` holds: the first section of results.md.

Every number here is read from the other sections' payloads (and notebook 03's own verdict
line), never typed in, so the table cannot drift from the tables it summarises. Re-run it
after any section changes::

    python benchmarks/results_summary.py            # rewrites the 'targets' section
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _results import write_section

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_03 = ROOT / "notebooks" / "03_motor_imagery.ipynb"

#: brainfm's method names in the sections read here.
TOKENS_PRETRAINED = "brainfm pretrained + full fine-tune, label-free token statistics"
PLAIN_PRETRAINED = "brainfm pretrained + full fine-tune"
LOSO = "brainfm from scratch, label-free token statistics"
HALF_PRETRAINED = "brainfm pretrained (half-split aligned pretraining) + full fine-tune, label-free token statistics"
EEGNET_PREFIX = "braindecode EEGNet"


def _cell(mean_std: list[float] | tuple[float, float]) -> str:
    return f"{mean_std[0]:.3f} ± {mean_std[1]:.3f}"


def _apart(a: list[float], b: list[float]) -> bool:
    """Whether mean ± std of ``a`` lies wholly above that of ``b``."""
    return a[0] - a[1] > b[0] + b[1]


def _gain_verdict(difference: float, pretrained: list[float], scratch: list[float], seeds: int) -> str:
    """Status of "pretrained beats scratch by ≥ 0.03, seed spreads apart" for one row: the gain and the
    spreads are judged apart, so a row that fails only on the 0.03 says so (one seed has no spread)."""
    apart = _apart(pretrained, scratch)
    if difference >= 0.03 and apart and seeds >= 2:
        return "**met**"
    if difference <= 0:
        return "missed"
    spread = "one seed, no spread" if seeds < 2 else ("spreads apart" if apart else "spreads overlap")
    return f"{'above by ≥ 0.03' if difference >= 0.03 else 'above by < 0.03'}, {spread}"


def loso_per_seed(section: dict[str, Any]) -> dict[tuple[str, str], dict[int, tuple[float, int]]]:
    """``{(method, normalize): {seed: (mean balanced accuracy over subjects, subjects)}}`` from
    the complete and the incomplete runs of the ``loso`` section."""
    rows = section["runs"] + section.get("incomplete", {}).get("runs", [])
    scores: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["seed"] is not None:
            scores[(r["method"], r["normalize"], r["seed"])][r["subject"]] = r["balanced_accuracy"]
    out: dict[tuple[str, str], dict[int, tuple[float, int]]] = defaultdict(dict)
    for (method, normalize, seed), per_subject in sorted(scores.items()):
        out[(method, normalize)][seed] = (float(np.mean(list(per_subject.values()))), len(per_subject))
    return out


def _seeds_text(per_seed: dict[int, tuple[float, int]]) -> str:
    return "; ".join(f"seed {s}: {m:.3f}" + ("" if n == 36 else f" ({n} of 36 folds)") for s, (m, n) in per_seed.items())


def _seeds_status(per_seed: dict[int, tuple[float, int]], target: float) -> str:
    complete = {s: m for s, (m, n) in per_seed.items() if n == 36}
    if not per_seed:
        return "not measured"
    if any(m < target for m, _ in per_seed.values()):
        return "missed at a seed"
    if len(complete) >= 3:
        return "**met**"
    return f"met at each seed so far ({len(complete)} of 3 complete)"


def notebook_verdict(path: Path = NOTEBOOK_03) -> str | None:
    """Notebook 03's own verdict line, from its committed outputs."""
    if not path.exists():
        return None
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", [])) or "".join(output.get("data", {}).get("text/plain", []))
            if text.startswith("Target (brainfm at least matches CSP + LDA)"):
                return text.strip()
    return None


def rows(sections: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, status, section) rows."""
    out = []
    recipe = sections["recipe"]["summary"]
    aligned, classical = recipe[f"{TOKENS_PRETRAINED} | align"]["balanced_accuracy"], recipe["log band power + LR | align"]["balanced_accuracy"]
    feature_z = recipe["log band power + LR, per-subject feature z-score | none"]["balanced_accuracy"]
    # both aligned variants are given: the runs log holds test scores only, so which one is reported
    # first was not chosen on validation subjects, and the verdict is the weaker one's
    plain_aligned = recipe[f"{PLAIN_PRETRAINED} | align"]["balanced_accuracy"]
    weaker = min(aligned[0], plain_aligned[0])
    met = weaker >= 0.85 and weaker > max(classical[0], feature_z[0])
    out.append(("Fixed split, aligned: brainfm ≥ 0.85 and above the classical pipeline with the same information",
                f"{_cell(aligned)} (pretrained, alignment + label-free token statistics); {_cell(plain_aligned)} "
                f"(pretrained, alignment only); classical: aligned {classical[0]:.3f}, per-subject feature z-score "
                f"{feature_z[0]:.3f}",
                "**met**" if met else "missed", "recipe"))
    plain, tokens = recipe[f"{PLAIN_PRETRAINED} | none"]["balanced_accuracy"], recipe[f"{TOKENS_PRETRAINED} | none"]["balanced_accuracy"]
    out.append(("Fixed split, no alignment: brainfm ≥ 0.75 (the plain classical pipeline)",
                f"no subject statistics at all: {_cell(plain)}; label-free token statistics only (the subject's "
                f"unlabelled windows, no signal alignment): {_cell(tokens)}",
                ("**met**" if plain[0] >= 0.75 else "met only with token statistics" if tokens[0] >= 0.75 else "missed"),
                "recipe"))
    loso = loso_per_seed(sections["loso"])
    pretrained = loso_per_seed(sections["loso"].get("pretrained", {"runs": []}))
    for target, suffix, threshold in (("reset-tuned on 60 s", ", reset-tuned 60 s", 0.85),
                                      ("alignment alone, no labels", "", 0.80)):
        scratch = loso.get((LOSO + suffix, "align"), {})
        # the same decoders fine-tuned from the half-split encoders: every fold from an encoder that never read it
        half = pretrained.get((HALF_PRETRAINED + suffix, "align"), {})
        text = f"from scratch: {_seeds_text(scratch)}" + (f"; half-split pretrained: {_seeds_text(half)}" if half else "")
        out.append((f"LOSO, 36 folds: {target} ≥ {threshold:.2f}", text, _seeds_status(scratch, threshold), "loso"))
    for (method, normalize), per_seed in loso.items():
        if method.startswith(EEGNET_PREFIX):
            out.append((f"LOSO reference: {method}, normalize {normalize}", _seeds_text(per_seed), "reference", "loso"))
    label = sections["label-efficiency"]["summary"]
    scratch = "brainfm from scratch, label-free token statistics"
    encoders = sorted({k.split(" | ")[1] for k in label if k.split(" | ")[1].startswith("brainfm pretrained")})
    for method in encoders:
        diffs = []
        for n in sorted({int(k.split(" | ")[0]) for k in label}):
            pre, scr = label.get(f"{n} | {method}"), label.get(f"{n} | {scratch}")
            if pre and scr:
                p, s = pre["balanced_accuracy"], scr["balanced_accuracy"]
                diffs.append((n, p[0] - s[0], _apart(p, s)))
        helps = [n for n, d, apart in diffs if d >= 0.03 and apart]
        name = method.removeprefix("brainfm ").split(" + ")[0]
        out.append((f"Pretrained beats scratch by ≥ 0.03, seed spreads apart ({name})",
                    f"{name} − scratch by labelled subjects: " + ", ".join(
                        f"{n}: {d:+.3f}" + (" (apart)" if a else "") for n, d, a in diffs),
                    f"met at {', '.join(map(str, helps))} labelled subjects only" if helps else "missed",
                    "label-efficiency"))
    for key, e in sections["loso"].get("pretrained", {}).get("summary", {}).items():
        method, normalize = key.split(" | ")
        if ", as trained" in method:  # a reference for the reset rows, not a decoder of its own
            continue
        name = method.removeprefix("brainfm ").split(" + ")[0]
        if ", reset-tuned" in method:  # the same decoders after reset-tuning on the subject's first 60 s
            name += ", reset-tuned " + method.split(", reset-tuned ")[1]
        pre, scr = e["balanced_accuracy"], e["scratch_balanced_accuracy"]
        folds = ("subjects " + ", ".join(s.removeprefix("eegmat") for s in e["subjects"]) if len(e["subjects"]) <= 12
                 else f"{len(e['subjects'])} subjects")
        verdict = _gain_verdict(e["mean_difference"], pre, scr, len(e["seeds"]))
        if len(e["seeds"]) < 3:
            verdict += f" ({len(e['seeds'])} of 3 seeds so far)"
        out.append((f"Pretrained beats scratch by ≥ 0.03, seed spreads apart ({name}, LOSO folds it never trained on, "
                    f"normalize {normalize})",
                    f"{_cell(pre)} against {_cell(scr)} over {folds}, seeds "
                    f"{', '.join(map(str, e['seeds']))}; per seed " + ", ".join(f"{d:+.3f}" for d in e["per_seed"].values()),
                    verdict, "loso"))
    probe = sections["probe"]["summary"]
    mr, nd = probe["masked reconstruction"]["balanced_accuracy"], probe["masked reconstruction + neurodynamics"]["balanced_accuracy"]
    out.append(("Frozen probe: masked reconstruction + neurodynamics beats masked reconstruction alone",
                f"{_cell(nd)} against {_cell(mr)} (`tiny` encoder)",
                "**met**" if _apart(nd, mr) else "missed", "probe"))
    for section, recipe in (("pretraining", "`small-10s`, windows as stored"),
                            ("pretraining-aligned", "`small-10s-aligned`, Euclidean-aligned windows")):
        if section not in sections:
            continue
        last = sections[section]["validation"][-1]
        status = "**met**" if last["below_mean_pct"] >= 30 else "missed"
        if status == "missed" and last["val/loss_neighbour_baseline"] > last["val/loss_mean_baseline"]:
            # alignment whitens the spatial covariance, so neighbours stop predicting a masked channel
            status += (f" (neighbour interpolation is {-100 * (1 - last['val/loss_neighbour_baseline'] / last['val/loss_mean_baseline']):.0f} % "
                       "worse than copy-the-mean on these windows)")
        out.append((f"Held-out masked reconstruction ≥ 30 % below copy-the-mean ({recipe})",
                    f"{last['below_mean_pct']:.1f} % below copy-the-mean, {last['below_neighbour_pct']:.1f} % below "
                    f"neighbour interpolation (step {last['step']})", status, section))
    verdict = notebook_verdict()
    if verdict:
        out.append(("Notebook 03: brainfm at least matches CSP + LDA", verdict.split(": ", 1)[1],
                    notebook_status(verdict), "notebook 03"))
    return out


def notebook_status(verdict: str) -> str:
    """Status of notebook 03's verdict line: a gap under 0.01, either way, is a tie (about one trial's
    worth over 15 test folds of ~9 trials: 1 / 9 / 15 = 0.007)."""
    means = re.search(r": ([0-9.]+) against CSP \+ LDA ([0-9.]+) .* over (\d+ split seeds × \d+ folds)", verdict)
    if means is None:
        raise ValueError(f"notebook 03's verdict no longer reads as 'X against CSP + LDA Y ... over N split seeds "
                         f"× K folds': {verdict!r}")
    met = "meets it" in verdict
    if abs(float(means.group(1)) - float(means.group(2))) < 0.01:
        return f"{'met' if met else 'missed'}, as a tie ({means.group(3)}, one subject)"
    return "**met**" if met else "missed"


def markdown(table: list[tuple[str, str, str, str]]) -> str:
    lines = ["## Issue #12's targets at a glance", "",
             "Command: `python benchmarks/results_summary.py`. Each figure is read from the section named in the "
             "last column (or from notebook 03's committed output), where the command, machine and spread are. "
             "The issue's targets are means over 3 seeds; where a section has runs per seed, each seed is given. "
             "The sections below are dated runs, kept as they were measured: the older ones (issue #5's `decoding`, "
             "the `alignment` section's `tiny` encoder) speak of the targets as they stood then, and this table, "
             "read from the newest sections, is the current verdict.", "",
             "| target | measured | status | section |", "|---|---|---|---|"]
    lines += [f"| {t} | {m} | {s} | {sec} |" for t, m, s, sec in table]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    sections = json.loads((args.out / "results.json").read_text())["sections"]
    table = rows(sections)
    text = markdown(table)
    print(text)
    write_section(args.out, "targets", {"experiment": "issue-12-targets",
                                        "command": "python benchmarks/results_summary.py",
                                        "rows": [dict(zip(("target", "measured", "status", "section"), r)) for r in table]},
                  text)


if __name__ == "__main__":
    main()
