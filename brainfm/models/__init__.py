"""brainfm models: config presets, sensor tokenizer, criss-cross encoder, heads, weights files."""

from brainfm.models.activations import ASH, get_activation
from brainfm.models.attention import CrissCrossBlock, load_braindecode_criss_cross
from brainfm.models.cbramod import CBraModConfig, CBraModEncoder, cbramod_decoder, load_cbramod_weights, save_cbramod_weights
from brainfm.models.config import PRESETS, ModelConfig, resolve_config
from brainfm.models.decoder import BrainDecoder
from brainfm.models.encoder import BrainEncoder
from brainfm.models.heads import AttentionPool, ClassificationHead, NeurodynamicsHead, ReconstructionHead, masked_mean
from brainfm.models.serialization import Weights, load_decoder, load_pretrained, read_weights, save_decoder, save_encoder
from brainfm.models.subject import SubjectAdapter, SubjectLayers
from brainfm.models.tokenizer import PatchEmbedding, SensorEmbedding, SensorTokenizer

__all__ = [
    "ASH",
    "PRESETS",
    "AttentionPool",
    "BrainDecoder",
    "BrainEncoder",
    "CBraModConfig",
    "CBraModEncoder",
    "ClassificationHead",
    "CrissCrossBlock",
    "ModelConfig",
    "NeurodynamicsHead",
    "PatchEmbedding",
    "ReconstructionHead",
    "SensorEmbedding",
    "SensorTokenizer",
    "cbramod_decoder",
    "get_activation",
    "load_braindecode_criss_cross",
    "load_cbramod_weights",
    "load_decoder",
    "load_pretrained",
    "masked_mean",
    "save_cbramod_weights",
    "save_decoder",
    "save_encoder",
    "SubjectAdapter",
    "SubjectLayers",
    "Weights",
    "read_weights",
    "resolve_config",
]
