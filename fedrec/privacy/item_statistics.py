"""Federated item statistics under user-level DP: each item's number of ratings and of
likes, summed over the clients.

Each user contributes one indicator vector (the items they rated, then the items they
liked), scaled down to L2 norm at most ``bound``; a client sums its users' vectors and
adds its share of Gaussian noise, ``N(0, (sigma * bound)^2 / n)`` per count for ``n``
clients asked, so the sum over the clients carries ``N(0, (sigma * bound)^2)``: the
Gaussian mechanism with noise multiplier ``sigma`` for adding or removing a user. (When
clients drop out, the sum carries less noise: the shares of the survivors only.)

Scaling to norm at most ``bound`` is the projection onto the ball of that radius, which
never increases distances; adding or removing one rating changes the unscaled 0/1 vector
in at most two entries (rated, and liked if it is a like), so it moves the user's scaled
vector by at most ``min(sqrt(2), 2 * bound)``. For the record-level ledger the release is
therefore the Gaussian mechanism with multiplier ``sigma * bound / min(sqrt(2), 2 * bound)``,
once: :func:`record_level_entry`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .ledger import PersistentAccountant

COUNT_UNIT = 1000.0  # counts travel in thousands: a client's sums stay inside SecAgg+'s clipping range


def user_contributions(
    interactions: pd.DataFrame, like_threshold: float, items: list[str], bound: float
) -> tuple[np.ndarray, np.ndarray]:
    """The sums over the users in ``interactions`` of their rating and like indicators,
    each user's vector scaled to L2 norm at most ``bound``.
    """
    row = {item: n for n, item in enumerate(items)}
    ratings, likes = np.zeros(len(items)), np.zeros(len(items))
    for _, frame in interactions.groupby("user"):
        rated = np.array([row[str(i)] for i in frame["item"]], dtype=int)
        liked = rated[frame["rating"].to_numpy() > like_threshold]
        scale = min(1.0, bound / math.sqrt(len(rated) + len(liked)))
        np.add.at(ratings, rated, scale)
        np.add.at(likes, liked, scale)
    return ratings, likes


def noise_share(noise_multiplier: float, bound: float, num_clients: int) -> float:
    """The noise std each of ``num_clients`` clients adds to each count."""
    return noise_multiplier * bound / math.sqrt(num_clients)


def user_level_epsilon(noise_multiplier: float, delta: float, mechanism: str = "rdp") -> float:
    """Epsilon of the release for adding or removing one user (infinite without noise)."""
    if noise_multiplier == 0:
        return math.inf
    return PersistentAccountant(mechanism, [(noise_multiplier, 1.0, 1)]).epsilon(delta)


def record_sensitivity(bound: float) -> float:
    """How far adding or removing one rating moves a user's scaled vector, at most."""
    return min(math.sqrt(2.0), 2.0 * bound)


def record_level_entry(noise_multiplier: float, bound: float) -> tuple[float, float, int]:
    """The release as a record-level ledger entry ``(noise multiplier, sample rate, steps)``."""
    return (noise_multiplier * bound / record_sensitivity(bound), 1.0, 1)
