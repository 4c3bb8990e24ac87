"""Collaborative signals of preference examples (``llm-input = 'hybrid'``).

Three vectors of ``mf-dim + 1`` per example, one per soft token (:mod:`fedrec.models.soft_tokens`):

* the user: their embedding ``p``, folded in from their own training likes against a
  finished collaborative run's item tables (on the user's client: it never leaves), then 0;
* the item: its embedding ``q`` and bias ``b`` from those tables;
* their match: ``p * q`` (elementwise) and ``b``, whose sum is the collaborative model's
  score, so a linear read-out of this token recovers it; the other two carry the
  identities CoLLM's tokens carry.

Embeddings are divided by the tables' root-mean-square embedding entry ``s`` (a public
constant of the tables; products by ``s**2``, biases by the root-mean-square bias), so
the projector's inputs are of order one whatever the tables' scale.
"""

from __future__ import annotations

import pandas as pd
import torch

from ...config import FedRecConfig
from ..collaborative.folded import FoldedInTables
from ..collaborative.retriever import Retriever, load_retriever
from .dataset import FederatedData
from .examples import PreferenceExample


def _rms(values: torch.Tensor) -> float:
    return float(values.square().mean().sqrt()) or 1.0


class CollaborativeSignals:
    """The user, item and match signal vectors of examples of the folded-in users."""

    slots = 3

    def __init__(self, folded: FoldedInTables) -> None:
        model = folded.model
        items, biases = model.items.weight.detach(), model.item_biases.weight.detach()
        scale = _rms(items)
        self.dim = items.shape[-1] + 1
        self.users = model.users.weight.detach() / scale
        self.items, self.biases = items / scale, biases / _rms(biases)
        self.user_row, self.item_row = folded.user_row, folded.item_row

    def of(self, examples: list[PreferenceExample]) -> torch.Tensor:
        """``[len(examples), 3, mf-dim + 1]``: each example's user, item and match vectors."""
        if not examples:
            return torch.zeros(0, self.slots, self.dim)
        users = self.users[torch.tensor([self.user_row[ex.user] for ex in examples])]
        rows = torch.tensor([self.item_row[ex.item] for ex in examples])
        items, biases = self.items[rows], self.biases[rows]
        user = torch.cat([users, torch.zeros_like(biases)], dim=1)
        return torch.stack([user, torch.cat([items, biases], 1), torch.cat([users * items, biases], 1)], dim=1)


def item_tables_retriever(
    cfg: FedRecConfig, catalog: pd.Series, interactions: pd.DataFrame, users: list[str]
) -> Retriever:
    """The run's ``item-tables`` file as a retriever of ``users`` (their likes in
    ``interactions``): an mf run's tables (the only kind a hybrid adapter reads) or an
    ease run's weights.
    """
    tables, threshold, dim = cfg.collaborative.item_tables, cfg.data.like_threshold, cfg.collaborative.mf_dim
    if cfg.model.llm_input == "hybrid":
        return FoldedInTables.from_file(tables, catalog, interactions, threshold, users, dim)
    return load_retriever(tables, catalog, interactions, threshold, users, dim)


def node_retriever(cfg: FedRecConfig, data: FederatedData, partition_id: int) -> Retriever:
    """``item-tables`` as a retriever of one client's users, from their training interactions."""
    catalog = data.central.data.items["item"]
    return item_tables_retriever(cfg, catalog, data.train_interactions(partition_id), data.users(partition_id))


def node_signals(
    cfg: FedRecConfig, data: FederatedData, partition_id: int, folded: Retriever | None = None
) -> CollaborativeSignals | None:
    """The signals of one client's users (None unless ``llm-input = 'hybrid'``), from
    ``folded`` when the caller has already folded them in.
    """
    if cfg.model.llm_input != "hybrid":
        return None
    return CollaborativeSignals(folded or node_retriever(cfg, data, partition_id))
