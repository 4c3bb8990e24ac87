"""The adapter's tensors on the wire, by name, without torch or peft: what the server's
strategies need to check and complete clients' updates.

With heterogeneous ranks a client's B is the first ``rank`` columns of the global B
(:func:`slice_to_rank`); the server completes a narrower reply with the global columns
(:func:`pad_to_rank`), which makes the average of the completed adapters the average of
the clients' products.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class AdapterMismatchError(ValueError):
    """An adapter update does not fit the local adapter (names, shapes, dtypes, values)."""


def slice_to_rank(state: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """The first ``rank`` columns of every LoRA B (and rows of every A); tensors or arrays."""
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
