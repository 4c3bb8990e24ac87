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

import torch
from torch.utils.data import DataLoader, TensorDataset

from ...models.collaborative import MatrixFactorization
from ...privacy.record_level import PrivateTraining, dp_sgd, seed_dp_sgd
from ..training import TrainResult
from .likes import Likes, bpr_loss


@dataclass(frozen=True)
class BPRTraining:
    """One client's local BPR optimisation in a round."""

    learning_rate: float
    batch_size: int
    local_epochs: int
    seed: int = 0


def train_bpr(
    model: MatrixFactorization, likes: Likes, training: BPRTraining, private: PrivateTraining | None = None
) -> TrainResult:
    """``local_epochs`` passes of BPR with SGD over ``likes`` (DP-SGD with ``private``).
    Plain SGD, not Adam: under DP every row of a table gets noise, and Adam would scale
    the noise of rows without data up to full-size steps.
    """
    if not len(likes):
        raise ValueError("no likes to train on")
    seed_dp_sgd(training.seed, model.items.weight.device)  # DP-SGD's Poisson sample and noise, as the LLM's
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
