"""A node's frozen-prefix states, kept on its own disk between ClientApp processes.

A deployed Flower 1.41 SuperNode starts a fresh ClientApp process for every message, so
the process-wide :data:`~fedrec.models.prefix_cache.PREFIX_CACHE` starts empty each time and
the frozen trunk would run over all of the node's prompts in every round (about 4 min of
CPU per round for a demo node). :class:`PrefixStore` keeps the states of one prompt set
in one file, named by a digest of the prompts' cache keys (backbone fingerprint, split
layer, compute dtype, tokens), so the next process loads them instead. The states derive
from the node's private data and stay on its disk beside it; the folder is a cache and
may be deleted at any time. The harness's central evaluation keeps its prompts' states
the same way (``eval-prefix-store``), so that runs on the same split share them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from flwr.supercore import log
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import replacing
from .prefix_cache import PREFIX_CACHE

SUFFIX = ".safetensors"


class PrefixStore:
    """Split-layer states of prompt sets under ``folder``, one file per set; the
    ``max_files`` most recently used files are kept.
    """

    def __init__(self, folder: str | Path, max_files: int = 8) -> None:
        self.folder = Path(folder).expanduser()
        self.max_files = max_files

    def path(self, keys: Sequence[str]) -> Path:
        """The file of the prompt set whose cache keys are ``keys`` (in order)."""
        return self.folder / (hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32] + SUFFIX)

    def load(self, keys: Sequence[str]) -> list[torch.Tensor] | None:
        """The stored states of ``keys``, or None when absent or unreadable (then logged)."""
        path = self.path(keys)
        try:
            tensors = load_file(path)
            states = list(torch.split(tensors["states"], tensors["lengths"].tolist()))
        except FileNotFoundError:
            return None
        except (OSError, SafetensorError, KeyError, RuntimeError) as err:
            log(logging.WARNING, "prefix store: %s is unreadable (%s); recomputing it", path, err)
            return None
        if len(states) != len(keys):
            log(logging.WARNING, "prefix store: %s holds %d prompts, not %d; recomputing", path, len(states), len(keys))
            return None
        os.utime(path)  # most recently used
        return states

    def save(self, keys: Sequence[str], states: Sequence[torch.Tensor]) -> None:
        """Store ``states`` of ``keys`` atomically, then drop the least recently used files
        beyond ``max_files``. The states are written from one concatenated copy (safetensors
        writes tensors from memory, without serializing them first).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        lengths = torch.tensor([s.shape[0] for s in states], dtype=torch.int64)
        with replacing(self.path(keys)) as tmp:
            save_file({"states": torch.cat(list(states)), "lengths": lengths}, tmp)
        files = sorted(self.folder.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[self.max_files :]:
            old.unlink(missing_ok=True)


def cached_states(
    token_lists: list[list[int]],
    keys: Sequence[str],
    compute: Callable[[list[list[int]]], list[torch.Tensor]],
    store: PrefixStore | None = None,
) -> list[torch.Tensor]:
    """The split-layer states of prompts whose cache keys are ``keys``: from
    :data:`PREFIX_CACHE` when it holds them all, else the whole set from ``store`` when it
    holds it, else the missing ones ``compute``d; kept in the cache and in ``store`` (also
    when the cache had them and ``store`` did not, for the next process).
    """
    states = [PREFIX_CACHE.get(key) for key in keys]
    missing = [i for i, state in enumerate(states) if state is None]
    stored = store.load(keys) if missing and store is not None else None
    if stored is not None:
        keep_states(keys, stored)
        return stored
    for i, state in zip(missing, compute([token_lists[i] for i in missing]) if missing else [], strict=True):
        states[i] = state
        PREFIX_CACHE.put(keys[i], state)
    if store is not None and (missing or not store.path(keys).exists()):
        store.save(keys, states)
    return states


def keep_states(keys: Sequence[str], states: Sequence[torch.Tensor], store: PrefixStore | None = None) -> None:
    """Keep computed states in :data:`PREFIX_CACHE` and, when given, ``store``."""
    for key, state in zip(keys, states, strict=True):
        PREFIX_CACHE.put(key, state)
    if store is not None:
        store.save(keys, states)
