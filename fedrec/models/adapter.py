"""The adapter on the wire and on disk: ``ArrayRecord`` by name, and peft's format."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from .scorer import PreferenceScorer


class AdapterMismatchError(ValueError):
    """An adapter update does not fit the local adapter (names, shapes, dtypes, values)."""


def adapter_state(scorer: PreferenceScorer) -> dict[str, torch.Tensor]:
    """The adapter's tensors by peft name (detached copies)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(scorer.peft).items()}


def adapter_to_arrays(scorer: PreferenceScorer) -> ArrayRecord:
    """The adapter as an ``ArrayRecord``: only LoRA factors (and an encoder's head)."""
    return ArrayRecord(torch_state_dict=adapter_state(scorer))


def check_adapter_state(expected: dict[str, torch.Tensor], received: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a state whose names, shapes, dtypes or values do not fit ``expected``."""
    missing, extra = expected.keys() - received.keys(), received.keys() - expected.keys()
    if missing or extra:
        raise AdapterMismatchError(
            f"{source}: adapter tensor names differ; missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
        )
    for name, tensor in received.items():
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise AdapterMismatchError(
                f"{source}: '{name}' has shape {tuple(tensor.shape)}, expected {tuple(want.shape)}"
            )
        if tensor.dtype != want.dtype:
            raise AdapterMismatchError(f"{source}: '{name}' has dtype {tensor.dtype}, expected {want.dtype}")
        if not torch.isfinite(tensor).all():
            raise AdapterMismatchError(f"{source}: '{name}' holds non-finite values")


def load_adapter_state(scorer: PreferenceScorer, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Set the adapter from a peft-named state after checking it fits."""
    check_adapter_state(get_peft_model_state_dict(scorer.peft), state, source)
    set_peft_model_state_dict(scorer.peft, state)


def load_adapter_arrays(scorer: PreferenceScorer, arrays: ArrayRecord, source: str = "message") -> None:
    """Set the adapter from an ``ArrayRecord`` (see :func:`adapter_to_arrays`)."""
    load_adapter_state(scorer, dict(arrays.to_torch_state_dict()), source)


def save_adapter(scorer: PreferenceScorer, folder: str | Path) -> Path:
    """Write the adapter in peft's format (``adapter_config.json``,
    ``adapter_model.safetensors``); the folder is replaced atomically.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        scorer.peft.save_pretrained(staging)
        if folder.exists():
            old = folder.with_name(f".{folder.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
            os.rename(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_adapter_folder(scorer: PreferenceScorer, folder: str | Path) -> None:
    """Set the adapter from a folder written by :func:`save_adapter` (or peft)."""
    path = Path(folder) / "adapter_model.safetensors"
    if not path.exists():
        raise AdapterMismatchError(f"{folder}: no adapter_model.safetensors")
    load_adapter_state(scorer, load_file(str(path)), str(folder))
