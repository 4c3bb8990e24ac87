"""BPR training of matrix factorization on a client's likes (Rendle et al., 2009).

A record is one (user, liked item) training interaction; each is paired with one item
drawn uniformly from the catalog as its negative. Under DP-SGD every parameter that
trains (the client's user embeddings and the item embeddings and biases) is clipped
per record and noised, so the user embeddings the client keeps for the next round are
themselves DP outputs and every round's released item tables are DP in the records.
Opacus's gradient of an embedding table is dense, and so is its noise: every item row
of a client's update moves, so the update does not reveal which items it rated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from ...models.collaborative import MatrixFactorization
from ...privacy.record_level import PrivateTraining, dp_sgd
from ..training import TrainResult, one_thread


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


@dataclass(frozen=True)
class BPRTraining:
    """One client's local BPR optimisation in a round."""

    learning_rate: float
    batch_size: int
    local_epochs: int
    seed: int = 0


def bpr_loss(
    model: MatrixFactorization, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Mean ``-log sigmoid(score(u, i) - score(u, j))`` over the records."""
    scores = model(users, torch.stack([items, negatives], dim=1))
    return -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1]).mean()


def train_bpr(
    model: MatrixFactorization, likes: Likes, training: BPRTraining, private: PrivateTraining | None = None
) -> TrainResult:
    """``local_epochs`` passes of BPR with SGD over ``likes`` (DP-SGD with ``private``).
    Plain SGD, not Adam: under DP every row of a table gets noise, and Adam would scale
    the noise of rows without data up to full-size steps.
    """
    if not len(likes):
        raise ValueError("no likes to train on")
    torch.manual_seed(training.seed)  # DP-SGD's Poisson sample and noise (unless secure-noise), as the LLM's
    generator = torch.Generator().manual_seed(training.seed)
    loader = DataLoader(
        TensorDataset(likes.users, likes.items), batch_size=training.batch_size, shuffle=True, generator=generator
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=training.learning_rate)
    num_items = model.items.num_embeddings
    total, count, steps = 0.0, 0, 0

    def step(optimizer: torch.optim.Optimizer, users: torch.Tensor, items: torch.Tensor) -> None:
        nonlocal total, count, steps
        optimizer.zero_grad()
        if len(users):
            negatives = torch.randint(num_items, (len(users),), generator=generator)
            loss = bpr_loss(model, users, items, negatives)
            loss.backward()
            total, count = total + float(loss.detach()) * len(users), count + len(users)
        else:  # an empty Poisson batch: no per-sample gradients, but the step (noise, accounting) happens
            for p in model.parameters():
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        optimizer.step()
        steps += 1

    model.train()
    if private is None:
        for _ in range(training.local_epochs):
            for users, items in loader:
                step(optimizer, users, items)
    else:
        with dp_sgd(model, optimizer, loader, private) as (dp_optimizer, dp_loader):
            for _ in range(training.local_epochs):
                for users, items in dp_loader:
                    step(dp_optimizer, users, items)
    model.eval()
    return TrainResult(total / count if count else float("nan"), steps, count)


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


def catalog_order(items: pd.Series) -> list[str]:
    """The shared item order of the tables: the catalog's ids, sorted."""
    return sorted(np.unique(items.astype(str)).tolist())
