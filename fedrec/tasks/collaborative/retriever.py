"""What ranks the whole catalog for a user before the LLM reranks the top: a finished
collaborative run's file, either matrix factorization's item tables (``item-tables.npz``,
the user folded in from their likes) or the item-item model's weights
(``item-weights.npz``, the user's ratings times them). Either way the user's side is
computed from their own likes, where they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ...models.item_tables import read_item_tables
from .item_item import ITEM_WEIGHTS, ItemItemScores


class Retriever(Protocol):
    """Scores of every catalog item (in ``items`` order) for known users."""

    items: list[str]
    item_row: dict[str, int]

    def catalog_scores(self, user: str) -> np.ndarray:
        """Every catalog item's score for ``user``."""


def load_retriever(
    path: str | Path,
    catalog: pd.Series,
    interactions: pd.DataFrame,
    like_threshold: float,
    users: list[str],
    dim: int | None = None,
) -> Retriever:
    """The retriever of a run's file for ``users`` (their likes in ``interactions``);
    matrix factorization's embeddings must be ``dim`` wide when given.
    """
    path = Path(path).expanduser()
    tables = read_item_tables(path)
    if ITEM_WEIGHTS in tables:
        return ItemItemScores(tables, catalog, interactions, like_threshold, users, str(path))
    from .folded import FoldedInTables  # torch (the fold-in fits the user's embedding) loads for mf only

    return FoldedInTables(tables, catalog, interactions, like_threshold, users, str(path), dim)
