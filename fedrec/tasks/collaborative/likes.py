"""Likes in the collaborative models' item order: the (user, liked item) pairs matrix
factorization trains on, its BPR loss, and fitting users to their likes with the item
tables fixed (fold-in). Light: no DP-SGD, no LLM, so an mf retrieval on a device
imports only this, torch and the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ...models.collaborative import MatrixFactorization
from ..threads import one_thread


@dataclass(frozen=True)
class Likes:
    """(user row, item row) index pairs of liked training interactions."""

    users: torch.Tensor
    items: torch.Tensor

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def of(cls, interactions: pd.DataFrame, like_threshold: float, users: list[str], items: list[str]) -> Likes:
        """The likes among ``interactions`` of ``users``, indexed by their positions in
        ``users`` and ``items`` (an item outside ``items`` is an error).
        """
        liked = interactions[(interactions["rating"] > like_threshold) & interactions["user"].isin(set(users))]
        user_row = {u: n for n, u in enumerate(users)}
        item_row = {i: n for n, i in enumerate(items)}
        unknown = set(liked["item"].astype(str)) - item_row.keys()
        if unknown:
            raise ValueError(f"{len(unknown)} liked items are not in the catalog, e.g. {sorted(unknown)[:3]}")
        return cls(
            torch.tensor([user_row[str(u)] for u in liked["user"]], dtype=torch.long),
            torch.tensor([item_row[str(i)] for i in liked["item"]], dtype=torch.long),
        )


def bpr_loss(
    model: MatrixFactorization, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Mean ``-log sigmoid(score(u, i) - score(u, j))`` over the records."""
    scores = model(users, torch.stack([items, negatives], dim=1))
    return -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1]).mean()


def fold_in(
    model: MatrixFactorization, likes: Likes, epochs: int = 50, learning_rate: float = 0.05, seed: int = 0
) -> None:
    """Fit the user embeddings to ``likes`` with the item tables fixed: full-batch BPR
    with Adam from zero, on one thread (repeatable). Users without likes keep a zero
    embedding (they are scored by the item biases).
    """
    item_tables = (model.items.weight, model.item_biases.weight)
    with one_thread():
        with torch.no_grad():
            model.users.weight.zero_()
        optimizer = torch.optim.Adam(model.users.parameters(), lr=learning_rate)
        generator = torch.Generator().manual_seed(seed)
        try:
            for table in item_tables:  # fixed: no gradient computed for them
                table.requires_grad_(False)
            for _ in range(epochs if len(likes) else 0):
                negatives = torch.randint(model.items.num_embeddings, (len(likes),), generator=generator)
                optimizer.zero_grad()
                bpr_loss(model, likes.users, likes.items, negatives).backward()
                optimizer.step()
        finally:
            for table in item_tables:
                table.requires_grad_(True)
