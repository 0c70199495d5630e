"""Autotuning candidates for the GEMM kernels, per GPU family, plus interpreter blocks.

Each list is passed in full to ``triton.autotune``; :func:`arch_pruner` keeps, at tuning
time, only the family that matches the device (Hopper sm_90, Ampere/Ada sm_8x) plus a
fallback that compiles everywhere. Configs too large for a device's shared memory fail
to compile and the autotuner skips them. Under ``TRITON_INTERPRET=1`` nothing is tuned:
the launchers pass the ``INTERPRET_*`` blocks, which are large so that the interpreter
launches few programs (its cost grows with the number of programs, not the block size).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import triton


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int, **extra: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, **extra},
                         num_warps=warps, num_stages=stages)


# --- W8A8 (int8 x int8 -> int32): mma k-step is 32 for int8, so BLOCK_K >= 32. ---
W8A8_HOPPER = [
    _cfg(128, 256, 128, 8, 3), _cfg(256, 128, 128, 8, 3), _cfg(128, 128, 128, 8, 4),
    _cfg(128, 128, 64, 4, 4), _cfg(64, 128, 128, 4, 4), _cfg(64, 64, 128, 4, 4),
]
W8A8_AMPERE = [
    _cfg(128, 256, 64, 8, 3), _cfg(256, 128, 64, 8, 3), _cfg(128, 128, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(32, 64, 64, 4, 4),
]
W8A8_FALLBACK = [_cfg(64, 64, 64, 4, 2)]
W8A8_INTERPRET = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 256}

# --- W4A16 tiled GEMM (M > 16): 16-bit activations, int4 weights dequantized in registers. ---
W4A16_HOPPER = [
    _cfg(128, 256, 64, 8, 3, SPLIT_K=1), _cfg(128, 128, 64, 8, 4, SPLIT_K=1),
    _cfg(64, 128, 64, 4, 4, SPLIT_K=1), _cfg(64, 64, 128, 4, 4, SPLIT_K=1),
]
W4A16_AMPERE = [
    _cfg(128, 128, 32, 4, 4, SPLIT_K=1), _cfg(64, 128, 32, 4, 4, SPLIT_K=1),
    _cfg(64, 64, 64, 4, 3, SPLIT_K=1), _cfg(32, 64, 64, 4, 3, SPLIT_K=1),
]
W4A16_FALLBACK = [_cfg(64, 64, 32, 4, 2, SPLIT_K=1)]

# --- W4A16 split-K GEMV (M <= 16): weight-bandwidth bound, spread K over more programs. ---
W4A16_GEMV_HOPPER = [
    _cfg(16, bn, bk, 4, 4, SPLIT_K=sk) for bn in (32, 64, 128) for bk in (128, 256) for sk in (1, 2, 4, 8)
]
W4A16_GEMV_AMPERE = [
    _cfg(16, bn, bk, 4, 3, SPLIT_K=sk) for bn in (32, 64) for bk in (64, 128) for sk in (1, 2, 4, 8)
]
W4A16_GEMV_FALLBACK = [_cfg(16, 32, 64, 4, 2, SPLIT_K=1)]
W4A16_INTERPRET = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 256, "SPLIT_K": 1}
W4A16_GEMV_INTERPRET = {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 2}


# --- W6A8 (int6 weights unpacked to int8 in registers, int8 activations, int32 accumulation). ---
# The tiled GEMM reuses the W8A8 shapes (same mma); the split-K GEMV (M <= 16) spreads the
# weight read over more programs, as W4A16's does.
W6A8_HOPPER = [_cfg(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages, SPLIT_K=1)
               for c in W8A8_HOPPER]
W6A8_AMPERE = [_cfg(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages, SPLIT_K=1)
               for c in W8A8_AMPERE]
W6A8_FALLBACK = [_cfg(64, 64, 64, 4, 2, SPLIT_K=1)]
# Both GEMVs are weight-bandwidth bound, so W6A8's searches W4A16's shapes.
W6A8_GEMV_HOPPER, W6A8_GEMV_AMPERE, W6A8_GEMV_FALLBACK = W4A16_GEMV_HOPPER, W4A16_GEMV_AMPERE, W4A16_GEMV_FALLBACK
W6A8_INTERPRET = dict(W4A16_INTERPRET)
W6A8_GEMV_INTERPRET = dict(W4A16_GEMV_INTERPRET)


def gpu_family() -> str:
    """``"hopper"`` (sm_90), ``"ampere"`` (sm_80/86/89), ``"blackwell"`` (sm_100+) or ``"other"``."""
    major, _ = torch.cuda.get_device_capability()
    if major == 9:
        return "hopper"
    if major == 8:
        return "ampere"
    return "blackwell" if major >= 10 else "other"


def arch_pruner(hopper: list[triton.Config], ampere: list[triton.Config],
                fallback: list[triton.Config]) -> Callable[..., list[triton.Config]]:
    """Build an ``early_config_prune`` hook that keeps the device's family plus fallback."""
    by_family = {"hopper": hopper, "ampere": ampere, "blackwell": hopper + ampere, "other": []}

    def prune(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
        wanted = by_family[gpu_family()] + fallback
        kept = [c for c in configs if any(c is w for w in wanted)]
        return kept or list(configs)

    return prune


def row_meta(n_cols: int, max_block: int = 8192) -> dict[str, int]:
    """Row-kernel meta-parameters on the GPU: up to ``max_block`` columns, ~8K elements per program."""
    block_k = min(triton.next_power_of_2(n_cols), max_block)
    block_m = max(1, min(64, 8192 // block_k))
    warps = 4 if block_k * block_m <= 4096 else 8
    return {"BLOCK_M": block_m, "BLOCK_K": block_k, "num_warps": warps}


def interpret_row_meta(n_rows: int, n_cols: int, max_block: int = 16384) -> dict[str, int]:
    """Row-kernel blocks under the interpreter: up to ``max_block`` columns and 512 rows per program."""
    block_k = min(triton.next_power_of_2(n_cols), max_block)
    block_m = min(triton.next_power_of_2(max(n_rows, 1)), max(1, (1 << 18) // block_k), 512)
    return {"BLOCK_M": block_m, "BLOCK_K": block_k}
