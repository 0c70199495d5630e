"""LightningModules: pretraining (and, later, decoding)."""

from brainfm.tasks.pretrain import PretrainModule

__all__ = ["PretrainModule"]
