"""LightningModules on one base (:class:`BrainTask`): pretraining, fine-tuning / reset-tuning,
and braindecode baselines."""

from brainfm.tasks.base import BrainTask, warmup_cosine
from brainfm.tasks.baselines import BaselineModule
from brainfm.tasks.classify import ClassifierModule
from brainfm.tasks.decode import DecodeModule
from brainfm.tasks.pretrain import PretrainModule

__all__ = ["BaselineModule", "BrainTask", "ClassifierModule", "DecodeModule", "PretrainModule", "warmup_cosine"]
