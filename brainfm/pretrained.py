"""Pretrained encoders for demos and tests, built on first use.

brainfm does not download weights. :func:`sample_encoder` returns, in order:

1. ``$BRAINFM_PRETRAINED`` if set (for example the ``encoder.safetensors`` that the
   README's main job writes, ``runs/quickstart/csv/version_0/encoder.safetensors``);
2. a cached short pretraining of the ``tiny`` encoder on the bundled sample store
   (masked patch reconstruction, EEGMAT subjects 32–35 excluded so that evaluations
   on CBraMod's test subjects stay honest), trained here on first use: about 30 s on a
   2-core CPU for the default 200 steps.

The cache lives in ``$BRAINFM_HOME/pretrained/`` and is keyed by steps and seed.

:func:`recipe_encoder` returns the encoder of the CPU recipe
(``configs/pretrain/small-10s.yaml``, seed 0), shipped in the repository with its SHA-256
because it takes about 40 minutes to rebuild: the benchmarks of issue #12 use it.
``recipe_encoder("small-10s-aligned")`` is the same recipe pretrained on per-subject aligned
windows (``configs/pretrain/small-10s-aligned.yaml``). ``recipe_encoder("small-10s-aligned-half-a")``
and ``"...-half-b"`` are that recipe on one half of EEGMAT's subjects each (:data:`HALF_RECIPES`), so
that a leave-one-subject-out evaluation can give every fold an encoder that never read its test
subject (:func:`trained_on`, :func:`validated_on`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl

from brainfm.data.datamodule import PretrainDataModule
from brainfm.data.root import cache_home
from brainfm.models.serialization import read_metadata
from brainfm.tasks.pretrain import PretrainModule

#: EEGMAT subjects kept out of demo pretraining (CBraMod's test split).
HELD_OUT = ["eegmat32", "eegmat33", "eegmat34", "eegmat35"]

#: The shipped recipe encoders, by recipe: ``brainfm fit --config configs/pretrain/<recipe>.yaml`` (seed 0,
#: 4000 steps, EEGMAT 28-31 validation only and 32-35 never seen), as exported at the end of that run,
#: with the SHA-256 each file is checked against. ``small-10s-aligned`` is pretrained on per-subject
#: Euclidean-aligned windows, for decoders fine-tuned on aligned windows.
RECIPES: dict[str, tuple[str, str]] = {
    "small-10s": ("small-10s-seed0.safetensors", "fef493a7fb71809430a190e16190df0f86a63ca3bba87bf4fc41c01b212d1d17"),
    "small-10s-aligned": ("small-10s-aligned-seed0.safetensors",
                          "c2f7c18d852519722a0a9180298725e26c55ba701bc763c59864c3898e9ce394"),
}
#: Sample-store subjects no shipped recipe encoder was trained on: EEGMAT 28-31 only scored its
#: validation loss (the file is the last step's weights, not chosen on them), 32-35 were never read.
#: The shipped files predate the ``train_subjects`` metadata that :func:`trained_on` reads.
RECIPE_UNTRAINED = frozenset(f"eegmat{i:02d}" for i in range(28, 36))
#: EEGMAT subjects that only scored the shipped recipes' validation loss.
RECIPE_VALIDATED = frozenset(f"eegmat{i:02d}" for i in range(28, 32))
#: The two-encoder protocol for leave-one-subject-out on EEGMAT: ``small-10s-aligned`` pretrained on
#: one half of the subjects each (overlays ``configs/pretrain/loso/small-10s-aligned-half-{a,b}.yaml``,
#: seed 0, 2000 steps): half a trained on EEGMAT 00-15 and validated on 16-17, half b trained on 18-33
#: and validated on 34-35. Each file records those subjects (:func:`trained_on`, :func:`validated_on`),
#: so every fold gets the half that never read its test subject: two pretraining runs, not one per fold.
HALF_RECIPES: dict[str, tuple[str, str]] = {
    "small-10s-aligned-half-a": ("small-10s-aligned-half-a-seed0.safetensors",
                                 "5a16863f1f923080c15583e329392d00fd0096a7e4a75098f87b0c923621cbcd"),
    "small-10s-aligned-half-b": ("small-10s-aligned-half-b-seed0.safetensors",
                                 "bad2a3b3725275180798cd07bd085db110f8df7e0a0ada41fb1352ef8082fbe1"),
}
WEIGHTS = Path(__file__).resolve().parent.parent / "configs" / "pretrain" / "weights"
#: The default recipe's encoder and hash (``recipe_encoder()``).
RECIPE_ENCODER = WEIGHTS / RECIPES["small-10s"][0]
RECIPE_SHA256 = RECIPES["small-10s"][1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_encoder(recipe: str = "small-10s") -> Path:
    """Path of a shipped recipe encoder (:data:`RECIPES`), checked against its SHA-256.

    Raises
    ------
    KeyError
        ``recipe`` is not one of :data:`RECIPES` or :data:`HALF_RECIPES`.
    FileNotFoundError
        Not in a source checkout (the weights live in ``configs/pretrain/weights/``).
    ValueError
        The file's hash differs from the recipe's.
    """
    shipped = RECIPES | HALF_RECIPES
    if recipe not in shipped:
        raise KeyError(f"no shipped encoder for recipe {recipe!r}; there are {sorted(shipped)}")
    name, sha256 = shipped[recipe]
    path = WEIGHTS / name
    if not path.is_file():
        config = (f"configs/pretrain/small-10s-aligned.yaml --config configs/pretrain/loso/{recipe}.yaml"
                  if recipe in HALF_RECIPES else f"configs/pretrain/{recipe}.yaml")
        raise FileNotFoundError(f"{path} is missing: the recipe encoders ship with a source checkout of "
                                f"brainfm; rebuild it with brainfm fit --config {config}")
    digest = _sha256(path)
    if digest != sha256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {sha256}: not the shipped {recipe} encoder")
    return path


def trained_on(encoder: str | os.PathLike, subjects: Sequence[str]) -> list[str]:
    """Those of ``subjects`` whose windows the pretraining of ``encoder`` trained on.

    An evaluation that calls a subject held out must find it absent here. Read from the
    file's ``train_subjects`` (written by :meth:`PretrainModule.export_safetensors
    <brainfm.tasks.pretrain.PretrainModule.export_safetensors>`), or, for a shipped recipe
    encoder (matched by SHA-256), from its recipe: every subject but :data:`RECIPE_UNTRAINED`,
    which is conservative for subjects outside the sample store.

    Raises
    ------
    ValueError
        ``encoder`` records no training subjects and is not a shipped recipe encoder.
    """
    return _recorded(encoder, subjects, "train_subjects", lambda s: s not in RECIPE_UNTRAINED,
                     f"the subjects it was pretrained on, so it cannot check that {', '.join(subjects)} were held out")


def validated_on(encoder: str | os.PathLike, subjects: Sequence[str]) -> list[str]:
    """Those of ``subjects`` whose windows only scored the validation loss of ``encoder``'s
    pretraining: read, never trained on. The exported weights are the last step's, so they did
    not choose them either; an evaluation that has an encoder which never read a subject at all
    prefers it (``benchmarks/bench_loso.py``). Read like :func:`trained_on`: the file's
    ``val_subjects``, or :data:`RECIPE_VALIDATED` for a shipped recipe encoder.

    Raises
    ------
    ValueError
        ``encoder`` records no validation subjects and is not a shipped recipe encoder.
    """
    return _recorded(encoder, subjects, "val_subjects", lambda s: s in RECIPE_VALIDATED,
                     "the subjects that validated its pretraining")


def _recorded(encoder: str | os.PathLike, subjects: Sequence[str], key: str, shipped: Callable[[str], bool],
              what: str) -> list[str]:
    """Those of ``subjects`` listed under ``key`` in ``encoder``'s metadata or, for a shipped recipe
    encoder (matched by SHA-256, its files predate the metadata), those ``shipped`` accepts."""
    path = Path(encoder)
    listed = read_metadata(path)["extra"].get(key)
    if listed is not None:
        return [s for s in subjects if s in set(listed)]
    if _sha256(path) in {sha for _, sha in RECIPES.values()}:
        return [s for s in subjects if shipped(s)]
    raise ValueError(f"{path} does not record {what} (no {key} in its metadata; encoders exported by brainfm fit "
                     "record them)")


def sample_encoder(steps: int = 200, seed: int = 0, store: str | None = None, progress: bool = False) -> Path:
    """Path of a pretrained ``encoder.safetensors`` (see the module docstring).

    Parameters
    ----------
    steps : int
        Pretraining steps when one has to be trained.
    seed : int
        Seed of that pretraining.
    store : str, optional
        Store to pretrain on (default: the sample store, built on first use).
    progress : bool
        Show Lightning's progress bar.
    """
    env = os.environ.get("BRAINFM_PRETRAINED")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"BRAINFM_PRETRAINED={env!r} is not a file")
        return path
    dest = cache_home() / "pretrained" / f"tiny-sample-recon-steps{steps}-seed{seed}" / "encoder.safetensors"
    if dest.is_file():
        return dest
    if store is None:
        from brainfm.pipelines.sample import sample_store  # noqa: PLC0415 - imports MNE; only to build the sample

        store = str(sample_store())
    pl.seed_everything(seed, workers=True, verbose=False)
    module = PretrainModule(model="tiny", lr=1e-3, warmup_steps=min(50, steps // 4), max_steps=steps)
    data = PretrainDataModule(store=store, window_s=2.0, batch_size=32, exclude_subjects=HELD_OUT,
                              val_subjects=["eegmat28", "eegmat29", "eegmat30", "eegmat31"], seed=seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             limit_val_batches=0, enable_progress_bar=progress, enable_model_summary=False)
        trainer.fit(module, data)
        tmp_file = Path(tmp) / "encoder.safetensors"
        module.export_safetensors(tmp_file)
        shutil.move(tmp_file, dest)  # atomic within one file system: never a half-written cache entry
    return dest
