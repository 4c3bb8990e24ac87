"""The adapter on the wire and on disk: ``ArrayRecord`` by name, and peft's format.

Only the trainable tensors travel: under FFA-LoRA (A frozen at the shared seeded
initialisation) that is B alone, half the bytes. With heterogeneous ranks a client's
B is the first ``rank`` columns of the global B (:func:`slice_to_rank`); the server
completes a narrower reply with the global columns (:func:`pad_to_rank`), which makes
the average of the completed adapters the average of the clients' products.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
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


def wire_state(scorer: PreferenceScorer) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors by peft name (detached copies)."""
    trainable = {p.data_ptr() for p in scorer.trainable_parameters()}
    return {
        k: v.detach().clone() for k, v in get_peft_model_state_dict(scorer.peft).items() if v.data_ptr() in trainable
    }


def adapter_to_arrays(scorer: PreferenceScorer) -> ArrayRecord:
    """The adapter's trainable tensors as an ``ArrayRecord`` (LoRA factors, an encoder's head)."""
    return ArrayRecord(torch_state_dict=wire_state(scorer))


def frozen_a_fingerprint(scorer: PreferenceScorer, rows: int) -> str:
    """Hash of the first ``rows`` rows of every frozen LoRA A: server and clients
    must agree on A when it does not travel.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(scorer.peft).items()):
        if "lora_A" in name:
            digest.update(name.encode())
            digest.update(tensor[:rows].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def slice_to_rank(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The first ``rank`` columns of every LoRA B (and rows of every A)."""
    return {name: t[:, :rank] if "lora_B" in name else t[:rank] if "lora_A" in name else t for name, t in state.items()}


def pad_to_rank(state: dict[str, np.ndarray], full: dict[str, np.ndarray], ranks: set[int]) -> dict[str, np.ndarray]:
    """Complete LoRA B tensors of a rank in ``ranks`` with ``full``'s remaining columns;
    any other difference from ``full``'s names and shapes is refused.
    """
    if state.keys() != full.keys():
        raise AdapterMismatchError("adapter tensor names differ from the global adapter's")
    padded = {}
    for name, values in state.items():
        want = full[name]
        if values.shape == want.shape:
            padded[name] = values
        elif "lora_B" in name and values.shape[:1] == want.shape[:1] and values.shape[1] in ranks:
            padded[name] = np.concatenate([values, want[:, values.shape[1] :]], axis=1).astype(want.dtype)
        else:
            raise AdapterMismatchError(f"'{name}' has shape {values.shape}, expected {want.shape} or a configured rank")
    return padded


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


def load_adapter_arrays(
    scorer: PreferenceScorer, arrays: ArrayRecord, source: str = "message", rank: int | None = None
) -> None:
    """Set the adapter's trainable tensors from an ``ArrayRecord`` (see
    :func:`adapter_to_arrays`); ``rank`` slices a wider global adapter to this one's.
    """
    state = dict(arrays.to_torch_state_dict())
    if rank is not None:
        state = slice_to_rank(state, rank)
    check_adapter_state(wire_state(scorer), state, source)
    set_peft_model_state_dict(scorer.peft, state)


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
