"""Collaborative signals of preference examples (``llm-input = 'hybrid'``): the user's
embedding, folded in from their own training likes against a finished collaborative
run's item tables (on the user's client: it never leaves), and the item's embedding
from those tables. The projector turns them into soft tokens (:mod:`fedrec.models.soft_tokens`).

Both are divided by the tables' root-mean-square embedding entry, a public constant of
the tables, so the projector's inputs are of order one whatever the tables' scale.
"""

from __future__ import annotations

import pandas as pd
import torch

from ...config import FedRecConfig
from ..collaborative.folded import FoldedInTables
from .dataset import FederatedData
from .examples import PreferenceExample


class CollaborativeSignals:
    """The (user, item) signal vectors of examples of the folded-in users."""

    def __init__(self, folded: FoldedInTables) -> None:
        items = folded.model.items.weight.detach()
        scale = float(items.square().mean().sqrt()) or 1.0
        self.dim = items.shape[-1]
        self.user_vectors = folded.model.users.weight.detach() / scale
        self.item_vectors = items / scale
        self.user_row, self.item_row = folded.user_row, folded.item_row

    def of(self, examples: list[PreferenceExample]) -> torch.Tensor:
        """``[len(examples), 2, dim]``: each example's user and item vectors."""
        if not examples:
            return torch.zeros(0, 2, self.dim)
        users = torch.tensor([self.user_row[ex.user] for ex in examples])
        items = torch.tensor([self.item_row[ex.item] for ex in examples])
        return torch.stack([self.user_vectors[users], self.item_vectors[items]], dim=1)


def folded_tables(
    cfg: FedRecConfig, catalog: pd.Series, interactions: pd.DataFrame, users: list[str]
) -> FoldedInTables:
    """The run's ``item-tables`` with ``users`` folded in from ``interactions``."""
    return FoldedInTables.from_file(
        cfg.collaborative.item_tables, catalog, interactions, cfg.data.like_threshold, users, cfg.collaborative.mf_dim
    )


def node_signals(cfg: FedRecConfig, data: FederatedData, partition_id: int) -> CollaborativeSignals | None:
    """The signals of one client's users (None unless ``llm-input = 'hybrid'``)."""
    if cfg.model.llm_input != "hybrid":
        return None
    catalog = data.central.data.items["item"]
    return CollaborativeSignals(
        folded_tables(cfg, catalog, data.train_interactions(partition_id), data.users(partition_id))
    )
