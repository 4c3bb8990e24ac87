"""The co-occurrence of ratings (an item-item Gram matrix) summed over the clients under
record-level DP: what the item-item model (``recommender = 'ease'``) is fitted from.

Each user contributes ``x x^T``, where ``x`` (:mod:`.rated_items`) holds 1 for each item
they like, the dislike weight (in [0, 1]; 0: likes only) for each item they rated without
liking and 0 for the rest, scaled to L2 norm at most ``bound`` (c); a client sums its
users' matrices, keeps the upper triangle (the matrix is symmetric) and adds its share of
Gaussian noise,
``N(0, (sigma * s)^2 / n)`` per entry for ``n`` clients asked, where ``s`` is one
rating's sensitivity below, so the sum over the clients carries ``N(0, (sigma * s)^2)``:
the Gaussian mechanism with multiplier ``sigma`` for adding or removing one rating (one
like when the dislike weight is 0), the "Analyze Gauss" release of Dwork et al. (2014).

The sensitivity: scaling to norm at most c is the projection onto that ball, which never
increases distances, and adding or removing one rating moves one entry of the unscaled
vector by 1 or by the dislike weight, at most 1; so the
scaled vector moves from ``x`` to ``y`` with ``|x - y| <= 1``, ``|x|, |y| <= c`` and
every entry in [0, 1]. The change ``D = x x^T - y y^T = x (x - y)^T + (x - y) y^T`` has
``|D|_F <= 2c``, and its upper triangle, which holds each off-diagonal entry once,
``|triu D|^2 = (|D|_F^2 + sum_i D_ii^2) / 2`` with
``sum_i D_ii^2 = sum_i (x_i - y_i)^2 (x_i + y_i)^2 <= 4``: so
``s = min(2c, sqrt(2 c^2 + 2))``. Adding or removing a whole user changes the sum by
``|x|^2 <= c^2`` (the triangle by at most that): the user-level multiplier is
``sigma * s / c^2``.
"""

from __future__ import annotations

import math

import numpy as np

from .ledger import PersistentAccountant


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """The entries on and above the diagonal, row by row."""
    return matrix[np.triu_indices(len(matrix))]


def symmetric(upper: np.ndarray, size: int) -> np.ndarray:
    """The symmetric ``size x size`` matrix whose :func:`upper_triangle` is ``upper``."""
    if len(upper) != size * (size + 1) // 2:
        raise ValueError(f"{len(upper)} values are not the upper triangle of a {size} x {size} matrix")
    matrix = np.zeros((size, size))
    matrix[np.triu_indices(size)] = upper
    return matrix + np.triu(matrix, 1).T


def cooccurrence(vectors: np.ndarray) -> np.ndarray:
    """The upper triangle of the users' summed ``x x^T``."""
    return upper_triangle(vectors.T @ vectors)


def record_sensitivity(bound: float) -> float:
    """How far adding or removing one rating moves the upper triangle of the sum, at most."""
    return min(2.0 * bound, math.sqrt(2.0 * bound**2 + 2.0))


def noise_share(noise_multiplier: float, bound: float, num_clients: int) -> float:
    """The noise std each of ``num_clients`` clients adds to each entry."""
    return noise_multiplier * record_sensitivity(bound) / math.sqrt(num_clients)


def record_level_entry(noise_multiplier: float) -> tuple[float, float, int]:
    """The release as a record-level ledger entry ``(noise multiplier, sample rate, steps)``."""
    return (noise_multiplier, 1.0, 1)


def user_level_epsilon(noise_multiplier: float, bound: float, delta: float, mechanism: str = "rdp") -> float:
    """Epsilon of the release for adding or removing one user (infinite without noise)."""
    if noise_multiplier == 0:
        return math.inf
    user_multiplier = noise_multiplier * record_sensitivity(bound) / bound**2
    return PersistentAccountant(mechanism, [(user_multiplier, 1.0, 1)]).epsilon(delta)
