"""A scorer's adapter on the wire and on disk: ``ArrayRecord`` by name, and peft's format.

Only the trainable tensors travel: under FFA-LoRA (A frozen at the shared seeded
initialisation) that is B alone, half the bytes (see :mod:`.wire` for ranks). A
collaborative soft-token projector is part of the adapter: its tensors travel and are
saved beside peft's, named with :data:`~.soft_tokens.PROJECTOR_PREFIX`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from .scorer import Scorer
from .soft_tokens import PROJECTOR_PREFIX
from .wire import AdapterMismatchError, slice_to_rank

PROJECTOR_FILE = "soft_tokens.safetensors"


def _projector_state(scorer: Scorer) -> dict[str, torch.Tensor]:
    if scorer.projector is None:
        return {}
    return {PROJECTOR_PREFIX + k: v.detach().clone() for k, v in scorer.projector.state_dict().items()}


def adapter_state(scorer: Scorer) -> dict[str, torch.Tensor]:
    """The adapter's tensors by peft name, and the projector's (detached copies)."""
    peft_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(scorer.peft).items()}
    return peft_state | _projector_state(scorer)


_WIRE_PARAMETERS: weakref.WeakKeyDictionary[Scorer, dict[str, nn.Parameter]] = weakref.WeakKeyDictionary()


def _wire_parameters(scorer: Scorer) -> dict[str, nn.Parameter]:
    """The adapter's trainable parameters by wire name: peft's names and the projector's.
    Found once per scorer (they never change after it is built; every reset and load is
    in place), so a client's message does not walk the backbone's modules again.
    """
    cached = _WIRE_PARAMETERS.get(scorer)
    if cached is None:
        trainable = {p.data_ptr(): p for p in scorer.trainable_parameters()}
        peft_state = get_peft_model_state_dict(scorer.peft)
        cached = {k: trainable[v.data_ptr()] for k, v in peft_state.items() if v.data_ptr() in trainable}
        if scorer.projector is not None:
            cached |= {PROJECTOR_PREFIX + k: p for k, p in scorer.projector.named_parameters()}
        _WIRE_PARAMETERS[scorer] = cached
    return cached


def wire_state(scorer: Scorer) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors by peft name, and the projector's (detached copies)."""
    return {name: p.detach().clone() for name, p in _wire_parameters(scorer).items()}


def _set_state(scorer: Scorer, state: dict[str, torch.Tensor]) -> None:
    """Set peft's tensors and the projector's from one checked state."""
    projector = {k[len(PROJECTOR_PREFIX) :]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    set_peft_model_state_dict(scorer.peft, {k: v for k, v in state.items() if not k.startswith(PROJECTOR_PREFIX)})
    if scorer.projector is not None:
        scorer.projector.load_state_dict(projector)


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


def check_adapter_state(
    expected: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], source: str
) -> None:
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
    check_adapter_state(adapter_state(scorer), state, source)
    _set_state(scorer, state)


def load_adapter_arrays(scorer: Scorer, arrays: ArrayRecord, source: str = "message", rank: int | None = None) -> None:
    """Set the adapter's trainable tensors from an ``ArrayRecord`` (see
    :func:`adapter_to_arrays`); ``rank`` slices a wider global adapter to this one's.
    """
    state = dict(arrays.to_torch_state_dict())
    if rank is not None:
        state = slice_to_rank(state, rank)
    parameters = _wire_parameters(scorer)
    check_adapter_state(parameters, state, source)
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor)


def save_adapter(scorer: Scorer, folder: str | Path) -> Path:
    """Write the adapter in peft's format (``adapter_config.json``,
    ``adapter_model.safetensors``; a projector in ``soft_tokens.safetensors``); the
    folder is replaced atomically.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        scorer.peft.save_pretrained(staging)
        if scorer.projector is not None:
            save_file(_projector_state(scorer), str(staging / PROJECTOR_FILE))
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


def read_adapter_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    """The peft-named state of a folder written by :func:`save_adapter` (or peft),
    unchecked, copied out of the files (safetensors maps them: a file rewritten in place
    under a kept state would end the process with a bus error).
    """
    path = Path(folder) / "adapter_model.safetensors"
    if not path.exists():
        raise AdapterMismatchError(f"{folder}: no adapter_model.safetensors")
    state = load_file(str(path))
    projector = Path(folder) / PROJECTOR_FILE
    if projector.exists():
        state |= load_file(str(projector))
    return {name: tensor.clone() for name, tensor in state.items()}


def load_adapter_folder(scorer: Scorer, folder: str | Path) -> None:
    """Set the adapter from a folder written by :func:`save_adapter` (or peft)."""
    load_adapter_state(scorer, read_adapter_folder(folder), str(folder))
