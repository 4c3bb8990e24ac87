"""Assigning users to clients with ``flwr-datasets`` partitioners.

``user``: one client per user (``NaturalIdPartitioner``); ``iid``: users shuffled into
equal groups (``IidPartitioner``); ``skewed``: groups drawn by a Dirichlet over the
users' like-rate quartile (``DirichletPartitioner``), so clients differ in label mix.
"""

from __future__ import annotations

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner, Partitioner

from .examples import ExampleSplit
from .interactions import DataError


def partition_users(
    split: ExampleSplit, users: list[str], num_partitions: int, scheme: str, seed: int, alpha: float = 0.5
) -> list[list[str]]:
    """Disjoint user groups, one per partition, covering ``users``."""
    if scheme == "user":
        if num_partitions != len(users):
            raise DataError(
                f"partitioner 'user' makes one client per user: num-clients must be "
                f"{len(users)} (the number of users), got {num_partitions}"
            )
        partitioner: Partitioner = NaturalIdPartitioner(partition_by="user")
        table = {"user": users}
    elif num_partitions > len(users):
        raise DataError(f"{num_partitions} clients but only {len(users)} users")
    elif scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        table = {"user": np.random.default_rng(seed).permutation(users).tolist()}
    elif scheme == "skewed":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="like_quartile",
            alpha=alpha,
            min_partition_size=1,
            seed=seed,
        )
        table = {"user": users, "like_quartile": _like_rate_quartiles(split, users)}
    else:
        raise DataError(f"unknown partitioner '{scheme}' (user, iid, skewed)")
    partitioner.dataset = datasets.Dataset.from_dict(table)
    try:
        return [sorted(partitioner.load_partition(i)["user"]) for i in range(num_partitions)]
    except ValueError as err:
        raise DataError(f"partitioner '{scheme}' failed for {len(users)} users: {err}") from None


def _like_rate_quartiles(split: ExampleSplit, users: list[str]) -> list[int]:
    """Quartile (0-3) of each user's like rate over their training examples."""
    rates = np.array([np.mean([ex.label for ex in split.train[u]]) if split.train[u] else 0.5 for u in users])
    edges = np.quantile(rates, [0.25, 0.5, 0.75])
    return np.searchsorted(edges, rates, side="right").tolist()
