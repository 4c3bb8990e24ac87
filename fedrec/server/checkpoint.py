"""Server checkpoints: what a resumed run needs to continue as if never stopped.

After every round the server writes ``<run>/checkpoint/``: ``arrays.npz`` (the global
adapter and the strategy's optimizer state: FedAdam/FedYogi moments, FedAvgM momentum)
and ``state.json`` (round number and the JSON-able state of the run's layers: random
generators, the secure-aggregation round counter, the client-level DP accountant, the
clients' epsilons seen). The folder
is staged beside the old one and swapped in by renames, so a crash at any point leaves
a complete checkpoint of the latest or of the previous round.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from .results import CHECKPOINT_DIR

STRATEGY_STATE = ("m_t", "v_t", "momentum_vector")  # Flower's FedOpt family and FedAvgM


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or from another run."""


@dataclass
class ServerCheckpoint:
    """The server's state after round ``round``."""

    round: int
    arrays: ArrayRecord
    strategy_state: dict[str, dict[str, np.ndarray] | list[np.ndarray]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # JSON-able state (generators, accountants, counters)


def strategy_state(strategy: Strategy) -> dict[str, dict[str, np.ndarray] | list[np.ndarray]]:
    """The optimizer state of a Flower strategy (empty for FedAvg and FedProx)."""
    state = {}
    for name in STRATEGY_STATE:
        value = getattr(strategy, name, None)
        if value is not None:
            state[name] = {k: np.asarray(v) for k, v in value.items()} if isinstance(value, dict) else list(value)
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, dict[str, np.ndarray] | list[np.ndarray]]) -> None:
    """Put a checkpoint's optimizer state back into ``strategy``."""
    for name, value in state.items():
        if not hasattr(strategy, name):
            raise CheckpointError(f"the checkpoint holds '{name}', which {type(strategy).__name__} does not have")
        setattr(strategy, name, value)


def write_checkpoint(run_folder: str | Path, checkpoint: ServerCheckpoint) -> Path:
    """Write ``<run_folder>/checkpoint`` atomically; returns its path."""
    folder = Path(run_folder) / CHECKPOINT_DIR
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{CHECKPOINT_DIR}-"))
    try:
        arrays = {f"arrays/{k}": v.numpy() for k, v in checkpoint.arrays.items()}
        for name, value in checkpoint.strategy_state.items():
            items = value.items() if isinstance(value, dict) else enumerate(value)
            arrays |= {f"{name}/{k}": np.asarray(v) for k, v in items}
        with open(staging / "arrays.npz", "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        kinds = {name: "dict" if isinstance(v, dict) else "list" for name, v in checkpoint.strategy_state.items()}
        meta = {
            "round": checkpoint.round,
            "strategy_state": kinds,
            "state": checkpoint.state,
        }
        with open(staging / "state.json", "w") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        old = folder.with_name(f".{CHECKPOINT_DIR}-old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.rename(folder, old)
        os.rename(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_checkpoint(run_folder: str | Path) -> ServerCheckpoint:
    """The checkpoint of ``run_folder``; a missing or incomplete one is refused."""
    folder = Path(run_folder) / CHECKPOINT_DIR
    if not folder.exists():
        old = folder.with_name(f".{CHECKPOINT_DIR}-old")  # a crash between the two renames
        if not old.exists():
            raise CheckpointError(f"{run_folder} has no checkpoint to resume from")
        os.rename(old, folder)
    try:
        meta = json.loads((folder / "state.json").read_text())
        with np.load(folder / "arrays.npz") as npz:
            stored = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {err}") from None
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in stored.items():
        group, _, name = key.partition("/")
        parts.setdefault(group, {})[name] = value
    strategy: dict[str, dict[str, np.ndarray] | list[np.ndarray]] = {}
    for name, kind in meta["strategy_state"].items():
        values = parts.get(name, {})
        strategy[name] = values if kind == "dict" else [values[str(i)] for i in range(len(values))]
    return ServerCheckpoint(
        round=int(meta["round"]),
        arrays=ArrayRecord({k: Array(v) for k, v in parts.get("arrays", {}).items()}),
        strategy_state=strategy,
        state=meta["state"],
    )
