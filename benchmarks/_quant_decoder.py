"""The decoder the quantization benchmarks score: ``tiny``, fine-tuned quickly from the sample encoder.

Kept small on purpose (the evidence of issue #16 runs on a shared 2-core CPU): the cached
sample encoder (:func:`brainfm.pretrained.sample_encoder`, 200 pretraining steps, EEGMAT
32-35 held out) is fine-tuned in full for ``epochs`` epochs on the 28 EEGMAT training subjects of CBraMod
(5-s windows every 2.5 s), validated on eegmat28-31, and the best validation epoch is kept.
Test split: CBraMod's eegmat32-35.

    python benchmarks/_quant_decoder.py STORE OUT_DIR   # writes OUT_DIR/decoder.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from brainfm.data.datamodule import DecodingDataModule
from brainfm.pretrained import sample_encoder
from brainfm.tasks.decode import DecodeModule

LABELS = {"rest": 0, "arithmetic": 1}
TRAIN = [f"eegmat{i:02d}" for i in range(28)]
VAL = ["eegmat28", "eegmat29", "eegmat30", "eegmat31"]
TEST = ["eegmat32", "eegmat33", "eegmat34", "eegmat35"]


def finetune(store: str, out: Path, epochs: int = 20, seed: int = 0) -> Path:
    """Fine-tune and return ``out / 'decoder.safetensors'`` (reused when present)."""
    dest = out / "decoder.safetensors"
    if dest.is_file():
        return dest
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    L.seed_everything(seed, verbose=False)
    encoder = sample_encoder(store=store)
    dm = DecodingDataModule(store=store, split={"train": TRAIN, "val": VAL, "test": TEST}, label_map=LABELS,
                            batch_size=32, stride_s=2.5)
    module = DecodeModule(init_from=str(encoder), n_classes=2, classes=list(LABELS), mode="full", lr=2e-3,
                          head_dropout=0.1)
    best = ModelCheckpoint(dirpath=out / "ckpt", monitor="val/balanced_accuracy", mode="max")
    trainer = L.Trainer(max_epochs=epochs, logger=False, callbacks=[best], enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                        default_root_dir=out)
    trainer.fit(module, dm)  # on_fit_end loads the best validation epoch back into the module
    module.export_safetensors(dest)
    print(f"best epoch {best.best_model_score}: {dest}")
    return dest


if __name__ == "__main__":
    finetune(sys.argv[1], Path(sys.argv[2]))
