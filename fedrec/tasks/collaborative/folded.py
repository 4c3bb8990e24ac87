"""A collaborative run's item tables with users folded in: what retrieval and the LLM's
soft tokens read. Each user's embedding is fitted to their own training likes with the
tables fixed (:func:`.training.fold_in`), where the user's data is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...models.collaborative import MatrixFactorization
from ...models.item_tables import ITEM_EMBEDDINGS, catalog_order, read_item_tables
from .likes import Likes, fold_in


class FoldedInTables:
    """Item tables (``item-tables.npz`` arrays; embeddings ``dim`` wide when given) and
    ``users`` folded in from their likes in ``interactions``; items in catalog order.
    """

    def __init__(
        self,
        tables: dict[str, np.ndarray],
        catalog: pd.Series,
        interactions: pd.DataFrame,
        like_threshold: float,
        users: list[str],
        source: str,
        dim: int | None = None,
    ) -> None:
        if ITEM_EMBEDDINGS not in tables:
            raise ValueError(f"{source}: no '{ITEM_EMBEDDINGS}' array (not an mf run's item tables)")
        width = tables[ITEM_EMBEDDINGS].shape[-1]
        if dim is not None and width != dim:
            raise ValueError(f"{source}: item embeddings of width {width}, but mf-dim is {dim}")
        self.items = catalog_order(catalog)
        self.model = MatrixFactorization(len(users), len(self.items), tables[ITEM_EMBEDDINGS].shape[-1])
        self.model.load_item_arrays(tables, source)
        fold_in(self.model, Likes.of(interactions, like_threshold, users, self.items))
        self.user_row = {user: n for n, user in enumerate(users)}
        self.item_row = {item: n for n, item in enumerate(self.items)}

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        catalog: pd.Series,
        interactions: pd.DataFrame,
        like_threshold: float,
        users: list[str],
        dim: int | None = None,
    ) -> FoldedInTables:
        """From a run's ``item-tables.npz``, whose embeddings must be ``dim`` wide when given."""
        tables = read_item_tables(Path(path).expanduser())
        return cls(tables, catalog, interactions, like_threshold, users, str(path), dim)

    @torch.no_grad()
    def catalog_scores(self, user: str) -> np.ndarray:
        """The model's score of every catalog item for a folded-in user."""
        users = torch.tensor([self.user_row[user]])
        return self.model(users, torch.arange(len(self.items))[None])[0].numpy().astype(float)
