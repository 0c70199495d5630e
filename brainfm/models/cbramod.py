"""CBraMod-compatible encoder: load CBraMod's released weights into brainfm.

CBraMod (Wang et al., ICLR 2025, arXiv 2412.07236) is the public criss-cross EEG
foundation model brainfm's own encoder descends from. :class:`CBraModEncoder` computes
exactly CBraMod's function, behind the :class:`~brainfm.models.BrainEncoder` interface
(``forward(x, sensor_geometry, sensor_type, channel_mask, patch_mask) -> (B, C, S, D)``),
so a :class:`~brainfm.models.BrainDecoder` can fine-tune or reset-tune it::

    encoder = load_cbramod_weights("pretrained_weights.pth")   # or a braindecode CBraMod
    decoder = cbramod_decoder(encoder, n_classes=2)            # BrainDecoder around it

Units. CBraMod expects 200 Hz, 1-s patches of 200 samples and signals in units of
100 uV; brainfm's windows are in uV, so the encoder divides EEG by ``input_scale = 100``.

What differs from brainfm's own tokenizer (:mod:`brainfm.models.tokenizer`)
-------------------------------------------------------------------------
* Patch embedding: three ``Conv2d`` with ``(1, k)`` kernels over all ``(channel, patch)``
  rows of a sample, so each ``GroupNorm`` normalises over the *whole sample*, not per
  patch; plus the spectral branch (``|rFFT|`` -> linear), as brainfm.
* Position: ACPE, a depthwise ``Conv2d`` with a ``(19, 7)`` kernel over the
  ``(channel, patch)`` grid of embeddings, added to them. It replaces brainfm's sinusoidal
  time table *and* sensor embedding, so channel identity comes from channel **order**:
  feed channels in one fixed order (CBraMod's fine-tuning recipes do), and geometry and
  type embeddings are not used (``sensor_geometry`` is ignored).
* No final LayerNorm; ``proj_out`` (CBraMod's reconstruction head, ``d_model ->
  out_dim``) is kept with the weights but applied only when ``use_proj_out`` is set, as
  CBraMod's fine-tuning replaces it by ``nn.Identity``.

Padding. brainfm pads mixed-montage batches with *trailing* channels
(:func:`brainfm.data.collate_windows`). Here padded rows are left out of the GroupNorm
statistics, zeroed before the ACPE conv (where they act as the conv's own zero padding)
and masked as attention keys, so every real token equals the one of the unpadded sample.
Padding must be trailing (a gap inside the channel axis would change ACPE).

Layers. The transformer layers are brainfm's :class:`~brainfm.models.CrissCrossBlock`:
CBraMod's layer is pre-norm, with the spatial heads on the first half of the features and
the temporal heads on the second, which is ``split_attention=True``, parameter for
parameter (``tests/test_models.py`` checks the single block, ``tests/test_cbramod.py``
the whole model against braindecode's ``CBraMod``). Only the packed QKV rows are
permuted, by :func:`cbramod_to_brainfm` and :func:`brainfm_to_cbramod`.

References
----------
.. [cbramod] Wang, J. et al. (2025). CBraMod: A Criss-Cross Brain Foundation Model for
   EEG Decoding. ICLR 2025. https://arxiv.org/abs/2412.07236
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from brainfm.models.attention import CrissCrossBlock
from brainfm.models.config import ModelConfig, register_encoder_kind
from brainfm.models.decoder import BrainDecoder
from brainfm.signal import CHANNEL_TYPES, SensorSpec, check_sfreq

#: ``encoder_kind`` written into a serialised config, so loaders can tell it from a ModelConfig.
ENCODER_KIND = "cbramod"

#: CBraMod's patch-embedding convs: ``(channels, kernel, stride, padding, groups)``.
CBRAMOD_CONVS: tuple[tuple[int, int, int, int, int], ...] = (
    (25, 49, 25, 24, 5), (25, 3, 1, 1, 5), (25, 3, 1, 1, 5),
)


@dataclass(frozen=True)
class CBraModConfig:
    """Architecture of a :class:`CBraModEncoder` (CBraMod's defaults) [cbramod]_.

    Parameters
    ----------
    name : str
        Informational.
    n_layers, n_heads, d_ff : int
        Criss-cross layers, heads (half spatial, half temporal) and feed-forward width.
        The weights do not store ``n_heads``; CBraMod uses 8.
    patch_size : int
        Samples per patch (200 = 1 s at 200 Hz).
    sfreq : float
        Sampling rate the weights expect.
    convs : tuple of (channels, kernel, stride, padding, groups)
        The patch-embedding convs; ``d_model`` follows from them.
    acpe_kernel : (int, int)
        ACPE kernel over (channels, patches); odd sizes.
    out_dim : int
        Width of ``proj_out`` (CBraMod's reconstruction head).
    use_proj_out : bool
        Apply ``proj_out`` to the tokens (braindecode's ``return_encoder_output``
        features); False, as CBraMod's fine-tuning, returns the transformer output.
    dropout : float
        Dropout on the spectral projection, attention probabilities, residual branches
        and feed-forward (CBraMod: 0.1).
    input_scale : float
        Divisor from brainfm's uV to CBraMod's units (100 uV).
    channel_types : tuple of str
        Channel types the encoder accepts (CBraMod was pretrained on EEG only).
    norm_eps : float
        LayerNorm epsilon.
    """

    name: str = "cbramod"
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int = 800
    patch_size: int = 200
    sfreq: float = 200.0
    convs: tuple[tuple[int, int, int, int, int], ...] = CBRAMOD_CONVS
    acpe_kernel: tuple[int, int] = (19, 7)
    out_dim: int = 200
    use_proj_out: bool = False
    dropout: float = 0.1
    input_scale: float = 100.0
    channel_types: tuple[str, ...] = ("eeg",)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "convs", tuple(tuple(int(v) for v in c) for c in self.convs))
        object.__setattr__(self, "acpe_kernel", tuple(int(v) for v in self.acpe_kernel))
        object.__setattr__(self, "channel_types", tuple(self.channel_types))
        for key in ("n_layers", "n_heads", "d_ff", "patch_size", "out_dim"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.convs or any(len(c) != 5 or min(c[:3]) < 1 or c[0] % c[4] for c in self.convs):
            raise ValueError(f"convs must be (channels, kernel, stride, padding, groups) rows with "
                             f"groups dividing channels, got {self.convs}")
        if len(self.acpe_kernel) != 2 or not all(k % 2 for k in self.acpe_kernel):
            raise ValueError(f"acpe_kernel must be two odd sizes, got {self.acpe_kernel}")
        if self.n_heads % 2 or self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must be even and divide d_model={self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {self.input_scale}")
        unknown = [t for t in self.channel_types if t not in CHANNEL_TYPES]
        if unknown:
            raise ValueError(f"unknown channel types {unknown}; known: {CHANNEL_TYPES}")

    # -- derived ----------------------------------------------------------------------
    @property
    def conv_steps(self) -> int:
        """Output length of the conv stack on one patch."""
        n = self.patch_size
        for _, kernel, stride, padding, _ in self.convs:
            n = (n + 2 * padding - kernel) // stride + 1
        return n

    @property
    def d_model(self) -> int:
        """Token width: last conv channels x conv output steps (200 for CBraMod)."""
        return self.convs[-1][0] * self.conv_steps

    @property
    def out_features(self) -> int:
        """Width of the encoder's output tokens."""
        return self.out_dim if self.use_proj_out else self.d_model

    @property
    def patch_seconds(self) -> float:
        return self.patch_size / self.sfreq

    def check_window(self, n_samples: int) -> int:
        """Validate a window length in samples; return its number of patches."""
        p = self.patch_size
        if n_samples < p or n_samples % p:
            raise ValueError(f"window of {n_samples} samples is not a positive multiple of the "
                             f"{p}-sample patch; crop it to {max(n_samples // p, 1) * p} samples")
        return n_samples // p

    def for_signal(self, spec: SensorSpec, window_s: float) -> "CBraModConfig":
        """Check that windows of ``window_s`` s of ``spec`` fit (sampling rate, length, types)."""
        check_sfreq(spec.sfreq, self.sfreq)
        self.check_window(int(round(window_s * self.sfreq)))
        bad = [n for n, t in zip(spec.ch_names, spec.ch_types) if t not in self.channel_types]
        if bad:
            raise ValueError(f"CBraMod reads {', '.join(self.channel_types)} channels only; got {bad}")
        return self

    # -- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, tagged ``encoder_kind: "cbramod"``."""
        d = dataclasses.asdict(self)
        d["convs"] = [list(c) for c in self.convs]
        d["acpe_kernel"] = list(self.acpe_kernel)
        d["channel_types"] = list(self.channel_types)
        return {"encoder_kind": ENCODER_KIND, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CBraModConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        d = dict(d)
        kind = d.pop("encoder_kind", ENCODER_KIND)
        if kind != ENCODER_KIND:
            raise ValueError(f"not a CBraMod config (encoder_kind={kind!r})")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown CBraModConfig fields: {unknown}")
        return cls(**d)

    def block_config(self) -> ModelConfig:
        """The :class:`ModelConfig` of one criss-cross layer (CBraMod's MHA dropout is
        both attention-probability and residual dropout)."""
        return ModelConfig(name=f"{self.name}-layer", n_layers=self.n_layers, d_model=self.d_model,
                           n_heads=self.n_heads, d_ff=self.d_ff, sfreq=self.sfreq,
                           patch_seconds=self.patch_seconds, activation="gelu",
                           dropout=self.dropout, attn_dropout=self.dropout,
                           split_attention=True, norm_eps=self.norm_eps)


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, row_mask: torch.Tensor) -> torch.Tensor:
    """``norm`` on ``x`` ``(B, ch, R, W)`` with statistics over the rows where ``row_mask``
    ``(B, R)`` is True only (padded channels must not move real ones)."""
    b, ch, r, w = x.shape
    g = norm.num_groups
    xg = x.reshape(b, g, ch // g, r, w)  # (B, G, ch/G, R, W)
    m = row_mask[:, None, None, :, None].to(x.dtype)  # (B, 1, 1, R, 1)
    count = m.sum(dim=(2, 3, 4), keepdim=True) * (ch // g) * w  # (B, 1, 1, 1, 1)
    mean = (xg * m).sum(dim=(2, 3, 4), keepdim=True) / count  # (B, G, 1, 1, 1)
    var = ((xg - mean).square() * m).sum(dim=(2, 3, 4), keepdim=True) / count  # biased, as GroupNorm
    y = ((xg - mean) * torch.rsqrt(var + norm.eps)).reshape(b, ch, r, w)  # (B, ch, R, W)
    return y * norm.weight[:, None, None] + norm.bias[:, None, None]


class CBraModPatchEmbedding(nn.Module):
    """CBraMod's patch embedding: conv branch + spectral branch + ACPE [cbramod]_.

    Attribute names follow CBraMod's ``PatchEmbedding``, so its state-dict keys
    (``proj_in.0.weight``, ``spectral_proj.0.weight``, ``positional_encoding.0.weight``,
    ``mask_encoding``) load unchanged.
    """

    def __init__(self, config: CBraModConfig) -> None:
        super().__init__()
        d, p = config.d_model, config.patch_size
        kc, kt = config.acpe_kernel
        self.positional_encoding = nn.Sequential(
            nn.Conv2d(d, d, kernel_size=(kc, kt), padding=(kc // 2, kt // 2), groups=d)
        )
        self.mask_encoding = nn.Parameter(torch.zeros(p), requires_grad=False)
        layers: list[nn.Module] = []
        last = 1
        for channels, kernel, stride, padding, groups in config.convs:
            layers += [nn.Conv2d(last, channels, (1, kernel), (1, stride), (0, padding)),
                       nn.GroupNorm(groups, channels), nn.GELU()]
            last = channels
        self.proj_in = nn.Sequential(*layers)
        self.spectral_proj = nn.Sequential(nn.Linear(p // 2 + 1, d), nn.Dropout(config.dropout))

    def forward(self, patches: torch.Tensor, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``patches`` ``(B, C, S, P)`` in CBraMod units -> embeddings ``(B, C, S, D)``.

        ``channel_mask`` ``(B, C)`` (None: all real) keeps padded channels out of the
        GroupNorm statistics and zeroes them before the ACPE conv.
        """
        b, c, s, p = patches.shape
        h = patches.reshape(b, 1, c * s, p)  # (B, 1, C*S, P), rows ordered (channel, patch)
        row_mask = None if channel_mask is None else channel_mask.repeat_interleave(s, dim=1)  # (B, C*S)
        for layer in self.proj_in:
            if row_mask is not None and isinstance(layer, nn.GroupNorm):
                h = masked_group_norm(h, layer, row_mask)
            else:
                h = layer(h)  # (B, ch, C*S, W)
        ch, w = h.shape[1], h.shape[3]
        emb = h.reshape(b, ch, c, s, w).permute(0, 2, 3, 1, 4).reshape(b, c, s, ch * w)  # (B, C, S, D)
        spectrum = torch.fft.rfft(patches, dim=-1, norm="forward").abs()  # (B, C, S, P//2+1)
        emb = emb + self.spectral_proj(spectrum)  # (B, C, S, D)
        if channel_mask is not None:
            emb = emb * channel_mask[:, :, None, None].to(emb.dtype)  # padded rows = conv zero padding
        pos = self.positional_encoding(emb.permute(0, 3, 1, 2))  # (B, D, C, S)
        return emb + pos.permute(0, 2, 3, 1)  # (B, C, S, D)


class CBraModEncoder(nn.Module):
    """CBraMod [cbramod]_ as a brainfm encoder: windows ``(B, C, T)`` in uV -> tokens.

    Same interface as :class:`~brainfm.models.BrainEncoder`. Numerically CBraMod's
    ``patch_embedding -> encoder (-> proj_out)``: see the module docstring for units,
    channel order and padding.

    Parameters
    ----------
    config : CBraModConfig, optional
        Architecture; default CBraMod's released one (12 layers, d=200, 8 heads).
    """

    def __init__(self, config: CBraModConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CBraModConfig()
        self.patch_embedding = CBraModPatchEmbedding(config)
        block = config.block_config()
        self.blocks = nn.ModuleList(CrissCrossBlock(block) for _ in range(config.n_layers))
        self.proj_out = nn.Sequential(nn.Linear(config.d_model, config.out_dim))
        self.proj_out.requires_grad_(config.use_proj_out)  # unused weights take no gradient
        self.register_buffer(
            "accepted_types",
            torch.tensor([CHANNEL_TYPES.index(t) for t in config.channel_types]),
            persistent=False,
        )

    def validate(self, x: torch.Tensor, sensor_type: torch.Tensor, channel_mask: torch.Tensor,
                 patch_mask: torch.Tensor | None = None) -> int:
        """Check shapes, types and trailing padding; return the number of patches ``S``."""
        if x.ndim != 3:
            raise ValueError(f"x must be (batch, channels, samples), got shape {tuple(x.shape)}")
        b, c, t = x.shape
        for key, val in (("sensor_type", sensor_type), ("channel_mask", channel_mask)):
            if tuple(val.shape) != (b, c):
                raise ValueError(f"{key} must have shape {(b, c)}, got {tuple(val.shape)}")
        if channel_mask.dtype != torch.bool:
            raise ValueError(f"channel_mask must be bool, got {channel_mask.dtype}")
        n_patches = self.config.check_window(t)
        if patch_mask is not None and tuple(patch_mask.shape) != (b, c, n_patches):
            raise ValueError(f"patch_mask must have shape {(b, c, n_patches)}, got {tuple(patch_mask.shape)}")
        n_real = channel_mask.sum(1)  # (B,)
        trailing = torch.arange(c, device=x.device) < n_real[:, None]  # (B, C)
        if (n_real == 0).any() or not torch.equal(trailing, channel_mask):
            raise ValueError("CBraMod needs at least one real channel per sample and padded channels "
                             "last (its ACPE conv runs over channel order)")
        wrong = channel_mask & ~torch.isin(sensor_type, self.accepted_types)
        if wrong.any():
            raise ValueError(f"CBraMod reads {', '.join(self.config.channel_types)} channels only; "
                             f"other types at (sample, channel) {wrong.nonzero()[:10].tolist()}")
        return n_patches

    def patchify(self, x: torch.Tensor, sensor_type: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        """Patches ``(B, C, S, P)`` in CBraMod's units (100 uV); padded channels zero."""
        self.config.check_window(x.shape[-1])
        x = torch.where(channel_mask.unsqueeze(-1), x / self.config.input_scale,
                        torch.zeros((), dtype=x.dtype, device=x.device))  # (B, C, T)
        b, c, t = x.shape
        return x.reshape(b, c, t // self.config.patch_size, self.config.patch_size)  # (B, C, S, P)

    def forward(
        self,
        x: torch.Tensor,
        sensor_geometry: torch.Tensor,
        sensor_type: torch.Tensor,
        channel_mask: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode windows ``x`` ``(B, C, T)`` in uV at 200 Hz -> tokens ``(B, C, S, D)``.

        ``sensor_geometry`` is accepted for interface compatibility and ignored;
        ``patch_mask`` ``(B, C, S)`` replaces those patches by CBraMod's mask encoding
        (as its masked pretraining). Rows of padded channels are zero.
        """
        self.validate(x, sensor_type, channel_mask, patch_mask)
        patches = self.patchify(x, sensor_type, channel_mask)  # (B, C, S, P)
        if patch_mask is not None:
            fill = self.patch_embedding.mask_encoding.to(patches.dtype)  # (P,), CBraMod's zeros
            patches = torch.where(patch_mask.unsqueeze(-1), fill, patches)  # (B, C, S, P)
        padded = not bool(channel_mask.all())
        mask = channel_mask if padded else None  # no padding: CBraMod's exact path, no key mask
        tokens = self.patch_embedding(patches, mask)  # (B, C, S, D)
        for block in self.blocks:
            tokens = block(tokens, mask)  # (B, C, S, D)
        if self.config.use_proj_out:
            tokens = self.proj_out(tokens)  # (B, C, S, out_dim)
        return tokens * channel_mask[:, :, None, None].to(tokens.dtype)


# -- key mapping -----------------------------------------------------------------------
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: CBraMod layer parameter -> CrissCrossBlock parameter (QKV rows permuted separately).
_LAYER_NAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "linear1.weight": "ff.linear1.weight", "linear1.bias": "ff.linear1.bias",
    "linear2.weight": "ff.linear2.weight", "linear2.bias": "ff.linear2.bias",
    "self_attn_s.out_proj.weight": "out_s.weight", "self_attn_s.out_proj.bias": "out_s.bias",
    "self_attn_t.out_proj.weight": "out_t.weight", "self_attn_t.out_proj.bias": "out_t.bias",
    "self_attn_s.in_proj_weight": "qkv_s.weight", "self_attn_s.in_proj_bias": "qkv_s.bias",
    "self_attn_t.in_proj_weight": "qkv_t.weight", "self_attn_t.in_proj_bias": "qkv_t.bias",
}
_BLOCK_NAMES = {v: k for k, v in _LAYER_NAMES.items()}
#: braindecode's classifier head (``final_layer``) is not part of the encoder.
_IGNORED_PREFIXES = ("final_layer.",)


def _permute_qkv(t: torch.Tensor, n_half: int, to_brainfm: bool) -> torch.Tensor:
    """torch's MHA packs QKV rows as (q/k/v, head, head_dim); brainfm as (head, q/k/v, head_dim)."""
    rows = t.shape[0]
    hd = rows // (3 * n_half)
    shape = (3, n_half, hd) if to_brainfm else (n_half, 3, hd)
    return t.reshape(*shape, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def cbramod_to_brainfm(state: Mapping[str, torch.Tensor], n_heads: int = 8) -> dict[str, torch.Tensor]:
    """Rename (and permute) a CBraMod state dict's keys to :class:`CBraModEncoder`'s.

    Patch-embedding and ``proj_out`` keys are identical; ``encoder.layers.{i}.*`` become
    ``blocks.{i}.*``. Keys that match no rule are kept as they are (the strict load then
    reports them).
    """
    out = {}
    for key, value in state.items():
        m = _LAYER.match(key)
        if m and m.group(2) in _LAYER_NAMES:
            name = _LAYER_NAMES[m.group(2)]
            if name.startswith("qkv"):
                value = _permute_qkv(value, n_heads // 2, to_brainfm=True)
            key = f"blocks.{m.group(1)}.{name}"
        out[key] = value
    return out


def brainfm_to_cbramod(state: Mapping[str, torch.Tensor], n_heads: int = 8) -> dict[str, torch.Tensor]:
    """Inverse of :func:`cbramod_to_brainfm`: keys as in CBraMod's ``pretrained_weights.pth``."""
    out = {}
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m and m.group(2) in _BLOCK_NAMES:
            if m.group(2).startswith("qkv"):
                value = _permute_qkv(value, n_heads // 2, to_brainfm=False)
            key = f"encoder.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
        out[key] = value
    return out


# -- loading ---------------------------------------------------------------------------
def _read_state(source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    """A plain CBraMod state dict from a file, a mapping or a module; ``module.`` stripped."""
    if isinstance(source, nn.Module):
        state = source.state_dict()
    elif isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such CBraMod weights file: {path}")
        if path.suffix == ".safetensors":
            state = load_file(os.fspath(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = dict(state[wrapper])
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f"not a CBraMod state dict: non-tensor entries {bad[:10]}")
    return {re.sub(r"^(module\.)+", "", k): v for k, v in state.items()}


def _infer_config(state: Mapping[str, torch.Tensor], source: Any, overrides: dict[str, Any]) -> CBraModConfig:
    """The architecture of a CBraMod state dict (plus ``overrides``).

    Layer count, d_ff, patch size, conv channels and kernels, ACPE kernel and ``out_dim``
    come from tensor shapes; heads, strides, paddings and GroupNorm groups are not stored,
    so they come from a braindecode module when given one, else CBraMod's defaults.
    """
    missing = [k for k in ("patch_embedding.mask_encoding", "patch_embedding.positional_encoding.0.weight",
                           "encoder.layers.0.linear1.weight") if k not in state]
    if missing:
        raise ValueError(f"not a CBraMod state dict: missing {missing} (got keys like {sorted(state)[:5]})")
    kw: dict[str, Any] = {
        "n_layers": 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k))),
        "d_ff": state["encoder.layers.0.linear1.weight"].shape[0],
        "patch_size": state["patch_embedding.mask_encoding"].shape[0],
        "acpe_kernel": tuple(state["patch_embedding.positional_encoding.0.weight"].shape[2:]),
    }
    if "proj_out.0.weight" in state:
        kw["out_dim"] = state["proj_out.0.weight"].shape[0]
    conv_keys = sorted((int(m.group(1)), k) for k in state
                       if (m := re.match(r"^patch_embedding\.proj_in\.(\d+)\.weight$", k))
                       and state[k].ndim == 4)
    if isinstance(source, nn.Module) and hasattr(source, "patch_embedding"):
        kw["convs"] = tuple((c, k, s, p, n[0]) for c, k, s, p, n in
                            source.patch_embedding.channels_kernel_stride_padding_norm)
        kw["n_heads"] = 2 * source.encoder.layers[0].self_attn_s.num_heads
        kw["dropout"] = source.encoder.layers[0].dropout.p
    elif conv_keys and "convs" not in overrides:
        shapes = [tuple(state[k].shape) for _, k in conv_keys]  # (out, in, 1, kernel)
        default = CBRAMOD_CONVS if len(CBRAMOD_CONVS) == len(shapes) else ()
        if not default or any((o, kk) != d[:2] for (o, _, _, kk), d in zip(shapes, default)):
            raise ValueError(f"patch-embedding convs {shapes} differ from CBraMod's {CBRAMOD_CONVS}; "
                             "pass convs=... (strides, paddings and groups are not stored)")
    kw.update(overrides)
    return CBraModConfig(**kw)


def load_cbramod_weights(
    source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module, **config: Any
) -> CBraModEncoder:
    """A :class:`CBraModEncoder` holding CBraMod's weights.

    Parameters
    ----------
    source : path, state dict or module
        CBraMod's released ``pretrained_weights.pth`` (read with
        ``torch.load(weights_only=True)``, so no code runs), a ``.safetensors`` file, a
        CBraMod or braindecode ``CBraMod`` state dict, or a braindecode ``CBraMod``
        module. ``module.`` prefixes (DataParallel) are stripped; braindecode's classifier
        head (``final_layer.*``) is ignored.
    **config
        :class:`CBraModConfig` fields that override what is read from the weights (e.g.
        ``use_proj_out=True``, ``dropout=0.0``, ``n_heads`` for a non-8-head state dict).

    Returns
    -------
    CBraModEncoder
        In eval mode.

    Raises
    ------
    ValueError
        Not a CBraMod state dict, or keys missing, unexpected or of the wrong shape
        (all listed, in CBraMod's names).
    """
    state = _read_state(source)
    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    cfg = _infer_config(state, source, config)
    encoder = CBraModEncoder(cfg)
    expected = brainfm_to_cbramod(encoder.state_dict(), cfg.n_heads)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError("CBraMod weights do not match the architecture: "
                         f"missing keys {missing}; unexpected keys {unexpected}; wrong shapes {shapes}")
    encoder.load_state_dict(cbramod_to_brainfm(state, cfg.n_heads), strict=True)
    return encoder.eval()


def save_cbramod_weights(encoder: CBraModEncoder, path: str | os.PathLike) -> None:
    """Write ``encoder`` as CBraMod's own ``.pth`` (keys as ``pretrained_weights.pth``),
    loadable by CBraMod's ``model.load_state_dict(torch.load(path))`` and braindecode."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    torch.save(brainfm_to_cbramod(state, encoder.config.n_heads), os.fspath(path))


# -- decoders --------------------------------------------------------------------------
def cbramod_decoder(
    weights: CBraModEncoder | str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module,
    n_classes: int,
    **decoder: Any,
) -> BrainDecoder:
    """A :class:`~brainfm.models.BrainDecoder` whose trunk is a CBraMod encoder.

    Fine-tune it as any decoder; reset-tune it by adding subject layers
    (``decoder.subjects.add(subject, n_channels)``) and training only them. Saved with
    :func:`brainfm.models.save_decoder`, it loads back with
    :func:`brainfm.models.load_decoder` (the config's ``encoder_kind`` says which trunk to
    build), and ``DecodeModule(init_from=...)`` reads CBraMod's ``.pth`` directly.

    Parameters
    ----------
    weights : CBraModEncoder or anything :func:`load_cbramod_weights` reads
        To change the architecture read from the weights (``use_proj_out``, ``dropout``),
        call :func:`load_cbramod_weights` with those overrides and pass the encoder.
    n_classes : int
    **decoder
        Further :class:`~brainfm.models.BrainDecoder` arguments (``pooling``,
        ``head_dropout``, ``subject_channels``, ``classes``, ...).
    """
    encoder = weights if isinstance(weights, CBraModEncoder) else load_cbramod_weights(weights)
    return BrainDecoder(encoder.config, n_classes, encoder=encoder, **decoder).train()


register_encoder_kind(ENCODER_KIND, CBraModConfig, CBraModEncoder)
