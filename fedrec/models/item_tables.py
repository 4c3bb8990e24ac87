"""A collaborative run's item tables as arrays: their names, their item order, and
reading them from the run's ``item-tables.npz`` (no torch, so that retrieval on a
device need not load it; the model that trains them is :mod:`.collaborative`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ITEM_EMBEDDINGS = "mf.item_embeddings"
ITEM_BIASES = "mf.item_biases"


def read_item_tables(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a run's ``item-tables.npz`` (``ValueError`` naming the file when unreadable)."""
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable item-tables file ({type(err).__name__}: {err})") from None


def catalog_order(items: pd.Series) -> list[str]:
    """The shared item order of the tables: the catalog's ids, sorted."""
    return sorted(np.unique(items.astype(str)).tolist())
