"""A scorer's adapter on the wire and on disk: ``ArrayRecord`` by name, and peft's format.

Only the trainable tensors travel: under FFA-LoRA (A frozen at the shared seeded
initialisation) that is B alone, half the bytes (see :mod:`.wire` for ranks).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from .scorer import Scorer
from .wire import AdapterMismatchError, slice_to_rank


def adapter_state(scorer: Scorer) -> dict[str, torch.Tensor]:
    """The adapter's tensors by peft name (detached copies)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(scorer.peft).items()}


def wire_state(scorer: Scorer) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors by peft name (detached copies)."""
    trainable = {p.data_ptr() for p in scorer.trainable_parameters()}
    return {
        k: v.detach().clone() for k, v in get_peft_model_state_dict(scorer.peft).items() if v.data_ptr() in trainable
    }


def adapter_to_arrays(scorer: Scorer) -> ArrayRecord:
    """The adapter's trainable tensors as an ``ArrayRecord`` (LoRA factors, an encoder's head)."""
    return ArrayRecord(torch_state_dict=wire_state(scorer))


def frozen_a_fingerprint(scorer: Scorer, rows: int) -> str:
    """Hash of the first ``rows`` rows of every frozen LoRA A: server and clients
    must agree on A when it does not travel.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(scorer.peft).items()):
        if "lora_A" in name:
            digest.update(name.encode())
            digest.update(tensor[:rows].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


def load_adapter_state(scorer: Scorer, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Set the adapter from a peft-named state after checking it fits."""
    check_adapter_state(get_peft_model_state_dict(scorer.peft), state, source)
    set_peft_model_state_dict(scorer.peft, state)


def load_adapter_arrays(scorer: Scorer, arrays: ArrayRecord, source: str = "message", rank: int | None = None) -> None:
    """Set the adapter's trainable tensors from an ``ArrayRecord`` (see
    :func:`adapter_to_arrays`); ``rank`` slices a wider global adapter to this one's.
    """
    state = dict(arrays.to_torch_state_dict())
    if rank is not None:
        state = slice_to_rank(state, rank)
    check_adapter_state(wire_state(scorer), state, source)
    set_peft_model_state_dict(scorer.peft, state)


def save_adapter(scorer: Scorer, folder: str | Path) -> Path:
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


def load_adapter_folder(scorer: Scorer, folder: str | Path) -> None:
    """Set the adapter from a folder written by :func:`save_adapter` (or peft)."""
    path = Path(folder) / "adapter_model.safetensors"
    if not path.exists():
        raise AdapterMismatchError(f"{folder}: no adapter_model.safetensors")
    load_adapter_state(scorer, load_file(str(path)), str(folder))
