"""Collaborative signals of preference examples (``llm-input = 'hybrid'``): the user's
embedding, folded in from their own training likes against a finished collaborative
run's item tables (on the user's client: it never leaves), and the item's embedding
from those tables. The projector turns them into soft tokens (:mod:`fedrec.models.soft_tokens`).

Both are divided by the tables' root-mean-square embedding entry, a public constant of
the tables, so the projector's inputs are of order one whatever the tables' scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...config import FedRecConfig
from ...models.collaborative import ITEM_EMBEDDINGS, MatrixFactorization, read_item_tables
from ..collaborative.training import Likes, catalog_order, fold_in
from .dataset import CentralSplit, FederatedData
from .examples import PreferenceExample


class CollaborativeSignals:
    """The (user, item) signal vectors of ``users``' examples."""

    def __init__(
        self,
        tables: dict[str, np.ndarray],
        catalog: pd.Series,
        train_interactions: pd.DataFrame,
        like_threshold: float,
        users: list[str],
        source: str,
    ) -> None:
        items = catalog_order(catalog)
        if ITEM_EMBEDDINGS not in tables:
            raise ValueError(f"{source}: no '{ITEM_EMBEDDINGS}' array (not an mf run's item tables)")
        model = MatrixFactorization(len(users), len(items), tables[ITEM_EMBEDDINGS].shape[-1])
        model.load_item_arrays(tables, source)
        fold_in(model, Likes.of(train_interactions, like_threshold, users, items))
        scale = float(np.sqrt(np.mean(np.square(tables[ITEM_EMBEDDINGS])))) or 1.0
        self.dim = model.items.embedding_dim
        self.user_vectors = {user: model.users.weight[n].detach() / scale for n, user in enumerate(users)}
        self.item_vectors = model.items.weight.detach() / scale
        self.item_row = {item: n for n, item in enumerate(items)}

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        catalog: pd.Series,
        train_interactions: pd.DataFrame,
        like_threshold: float,
        users: list[str],
        dim: int,
    ) -> CollaborativeSignals:
        """Signals from a run's ``item-tables.npz``, whose embeddings must be ``dim`` wide."""
        tables = read_item_tables(Path(path).expanduser())
        width = tables.get(ITEM_EMBEDDINGS, np.zeros((0, 0))).shape[-1]
        if width != dim:
            raise ValueError(f"{path}: item embeddings of width {width}, but mf-dim is {dim}")
        return cls(tables, catalog, train_interactions, like_threshold, users, str(path))

    def of(self, examples: list[PreferenceExample]) -> torch.Tensor:
        """``[len(examples), 2, dim]``: each example's user and item vectors."""
        if not examples:
            return torch.zeros(0, 2, self.dim)
        return torch.stack(
            [torch.stack([self.user_vectors[ex.user], self.item_vectors[self.item_row[ex.item]]]) for ex in examples]
        )


def node_signals(cfg: FedRecConfig, data: FederatedData, partition_id: int) -> CollaborativeSignals | None:
    """The signals of one client's users (None unless ``llm-input = 'hybrid'``)."""
    if cfg.model.llm_input != "hybrid":
        return None
    return CollaborativeSignals.from_file(
        cfg.collaborative.item_tables,
        data.central.data.items["item"],
        data.train_interactions(partition_id),
        cfg.data.like_threshold,
        data.users(partition_id),
        cfg.collaborative.mf_dim,
    )


def central_signals(cfg: FedRecConfig, central: CentralSplit, users: list[str]) -> CollaborativeSignals | None:
    """The signals of the central evaluation's ``users`` (None unless ``llm-input = 'hybrid'``)."""
    if cfg.model.llm_input != "hybrid":
        return None
    return CollaborativeSignals.from_file(
        cfg.collaborative.item_tables,
        central.data.items["item"],
        central.split.train_interactions,
        cfg.data.like_threshold,
        users,
        cfg.collaborative.mf_dim,
    )
