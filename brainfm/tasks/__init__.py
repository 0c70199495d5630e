"""LightningModules: pretraining, fine-tuning / reset-tuning, and braindecode baselines."""

from brainfm.tasks.baselines import BaselineModule
from brainfm.tasks.classify import ClassifierModule
from brainfm.tasks.decode import DecodeModule
from brainfm.tasks.pretrain import PretrainModule

__all__ = ["BaselineModule", "ClassifierModule", "DecodeModule", "PretrainModule"]
