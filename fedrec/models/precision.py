"""The forward pass's autocast dtype. ``bfloat16`` pays only where the hardware computes
it natively (CUDA GPUs from Ampere on; CPUs with AVX512-BF16 or AMX): elsewhere torch
emulates it, and an AVX2-only CPU runs a bfloat16 linear about 5x slower than a float32
one. ``auto`` picks bfloat16 where it is native and float32 elsewhere.
"""

from __future__ import annotations

import torch

from ..config import COMPUTE_DTYPES


def native_bfloat16(device: str) -> bool:
    """Whether ``device`` ("cpu" or "cuda") computes bfloat16 matrix products natively."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    capabilities = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check is not None and check() for check in capabilities)


def resolve_compute_dtype(name: str, device: str) -> torch.dtype:
    """The dtype that config value ``name`` (one of ``COMPUTE_DTYPES``) means on ``device``."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}; got '{name}'")
    if name == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return getattr(torch, name)


def scoring_device() -> str:
    """Where a process's scorer runs: the GPU when one is visible."""
    return "cuda" if torch.cuda.is_available() else "cpu"
