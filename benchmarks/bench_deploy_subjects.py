"""A decoder trained with label-free token statistics, deployed per subject: ONNX against PyTorch.

The anchor is the decoder in PyTorch as ``brainfm test`` scores it: each test subject's FiLM set from
its own unlabelled session (:mod:`brainfm.tasks.token_stats`). brainfm's side is the deployment path:
``brainfm adapt`` adds the test subjects to a copy of the decoder file, then one ONNX graph per
subject (``brainfm export --subject``) scores that subject's windows. The shared-model row is what
every export gave before deployments carried subject layers. Windows: EEGMAT 32-35 (CBraMod's test
split), 5 s, normalised as the decoder was trained (its method, each subject's session)::

    brainfm fit --config configs/finetune/eegmat-recipe.yaml --trainer.max_epochs 2
    python benchmarks/bench_deploy_subjects.py --ckpt runs/finetune-eegmat-recipe/csv/version_0/decoder.safetensors \\
        --store STORE --json deploy-subjects.json

Rows: balanced accuracy (ratio > 1: the deployed graph scores higher than PyTorch) and the share of
windows where both predict the same class. ``--other-window-s 4`` adds the PyTorch decoder scored on
windows of another length (its statistics still from the training length, as ``detect`` ran it with
its 4-s default before decoders recorded their training window).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from _eegmat import report, row
from sklearn.metrics import balanced_accuracy_score

from brainfm.data.datamodule import DecodingDataModule
from brainfm.deploy import export_onnx, onnx_session, run_onnx
from brainfm.deploy.calibrate import decoder_inputs
from brainfm.deploy.checkpoint import load_checkpoint
from brainfm.models import load_decoder
from brainfm.models.decoder import DEFAULT_WINDOW_S
from brainfm.tasks.token_stats import adapt_dataset, adapt_decoder

TEST = ["eegmat32", "eegmat33", "eegmat34", "eegmat35"]
LABELS = {"rest": 0, "arithmetic": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="decoder.safetensors trained with token_stats: true")
    ap.add_argument("--store", required=True, help="the sample store (brainfm sample-data)")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--other-window-s", type=float, default=None,
                    help="also score PyTorch on windows of this length (e.g. 4, the detector's old default)")
    args = ap.parse_args()
    reference = load_decoder(args.ckpt)
    window_s = reference.window_s or DEFAULT_WINDOW_S
    method = json.loads(reference.normalization[1])["method"] if reference.normalization is not None else None
    dm = _test_windows(args.store, window_s, method)
    adapt_dataset(reference, dm.sets["test"], "session")  # what `brainfm test` sets
    with tempfile.TemporaryDirectory() as tmp:
        adapted = Path(tmp) / "adapted.safetensors"
        adapt_decoder(args.ckpt, args.store, TEST, adapted)
        sessions = {}
        for subject in TEST:
            export_onnx(load_checkpoint(adapted, subject), Path(tmp) / f"{subject}.onnx")
            sessions[subject] = onnx_session(Path(tmp) / f"{subject}.onnx")
        shared = load_decoder(args.ckpt)
        labels, eager, graph, stripped = [], [], [], []
        for batch in dm.test_dataloader():
            x = decoder_inputs(batch)
            with torch.inference_mode():
                eager += reference(*x, subjects=batch["subject"]).argmax(1).tolist()
                stripped += shared(*x).argmax(1).tolist()
            graph += [int(run_onnx(sessions[s], *[t[i:i + 1] for t in x]).argmax(1)[0])
                      for i, s in enumerate(batch["subject"])]
            labels += batch["label"].tolist()
    score = {name: balanced_accuracy_score(labels, p) for name, p in
             (("eager", eager), ("graph", graph), ("stripped", stripped))}
    print(f"{len(labels)} windows of {', '.join(TEST)} ({window_s:g} s); input normalisation: {method}")
    rows = [row("bal. accuracy, ONNX per subject", "", score["graph"], score["eager"]),
            row("bal. accuracy, shared-model ONNX", "", score["stripped"], score["eager"]),
            row("same class as PyTorch, ONNX per subject", "share", float(np.mean(np.array(graph) == eager)), 1.0)]
    if args.other_window_s:
        other = _test_windows(args.store, args.other_window_s, method)
        labels, predicted = [], []
        for batch in other.test_dataloader():
            with torch.inference_mode():
                predicted += reference(*decoder_inputs(batch), subjects=batch["subject"]).argmax(1).tolist()
            labels += batch["label"].tolist()
        print(f"{len(labels)} windows of {args.other_window_s:g} s")
        rows.append(row(f"bal. accuracy, PyTorch on {args.other_window_s:g}-s windows", "",
                        balanced_accuracy_score(labels, predicted), score["eager"]))
    report(rows, "PyTorch", args.json)


def _test_windows(store: str, window_s: float, method: str | None) -> DecodingDataModule:
    """EEGMAT 32-35's labelled windows, normalised with each subject's session statistics."""
    dm = DecodingDataModule(store=store, split="eegmat-cbramod", window_s=window_s,
                            label_map=LABELS, batch_size=64, normalize=method, stats_source="session")
    dm.setup("test")
    return dm


if __name__ == "__main__":
    main()
