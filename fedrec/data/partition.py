"""Drawing users and assigning them to clients with ``flwr-datasets`` partitioners.

``user``: one client per user (``NaturalIdPartitioner``); ``iid``: users shuffled into
equal groups (``IidPartitioner``); ``skewed``: groups drawn by a Dirichlet over the
users' like-rate quartile (``DirichletPartitioner``), so clients differ in label mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..config import PARTITIONERS
from .interactions import DataError

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def sample_users(users: list[str], count: int, seed: int) -> list[str]:
    """``count`` users drawn with a fixed seed (all of them when ``count`` is 0), sorted."""
    if count == 0 or count >= len(users):
        return sorted(users)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(sorted(users), size=count, replace=False).tolist())


def partition_users(
    users: list[str],
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    like_rates: Sequence[float] = (),
) -> list[list[str]]:
    """Disjoint user groups, one per partition, covering ``users``; ``like_rates`` (one
    per user) drive the ``skewed`` scheme.
    """
    if scheme not in PARTITIONERS:
        raise DataError(f"unknown partitioner '{scheme}' ({', '.join(PARTITIONERS)})")
    # imported here: `datasets` takes about a second to import, and a device recommending
    # or a deployed node answering a message reads its own data without partitioning
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

    if scheme == "user":
        if num_partitions != len(users):
            raise DataError(
                f"partitioner 'user' makes one client per user: num-clients must be "
                f"{len(users)} (the number of users), got {num_partitions}"
            )
        partitioner: Partitioner = NaturalIdPartitioner(partition_by="user")
        table: dict[str, list] = {"user": users}
    elif num_partitions > len(users):
        raise DataError(f"{num_partitions} clients but only {len(users)} users")
    elif scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        table = {"user": np.random.default_rng(seed).permutation(users).tolist()}
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="like_quartile",
            alpha=alpha,
            min_partition_size=1,
            seed=seed,
        )
        table = {"user": users, "like_quartile": _quartiles(like_rates)}
    partitioner.dataset = datasets.Dataset.from_dict(table)
    try:
        return [sorted(partitioner.load_partition(i)["user"]) for i in range(num_partitions)]
    except ValueError as err:
        raise DataError(f"partitioner '{scheme}' failed for {len(users)} users: {err}") from None


def _quartiles(values: Sequence[float]) -> list[int]:
    """Quartile (0-3) of each value."""
    rates = np.asarray(values, dtype=float)
    edges = np.quantile(rates, [0.25, 0.5, 0.75])
    return np.searchsorted(edges, rates, side="right").tolist()
