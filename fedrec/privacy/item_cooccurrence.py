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

The sensitivity of the upper triangle to adding one rating of weight ``a`` in (0, 1]
(removing it is the same pair the other way): the unscaled vector goes from ``u`` (with
``u_k = 0``) to ``v = u + a e_k``, entries in [0, 1]; the scaled ones are ``y`` and ``x``.

* Neither scaled (``|v| <= c``): the triangle moves by ``a u_j`` in row k (each once) and
  ``a^2`` on the diagonal, so by ``a |v| <= c``.
* Both scaled (``|u| >= c``): ``D = x x^T - y y^T = c^2 (p p^T - q q^T)`` for the unit
  vectors ``p = v / |v|`` and ``q = u / |u|``, with ``|D|_F^2 = 2 c^4 a^2 / |v|^2`` and, from
  ``sum_i u_i^4 <= |u|^2``, ``sum_i D_ii^2 <= (c^4 + c^2) a^4 / |v|^4``; with
  ``|triu D|^2 = (|D|_F^2 + sum_i D_ii^2) / 2`` and ``a^2 / |v|^2 <= 1 / (c^2 + 1)`` this is
  at most ``(c^4 + c^2 / 2) / (c^2 + 1) < c^2``.
* Only ``v`` scaled (``|u| < c < |v| = sqrt(c^2 + d)``, ``0 < d <= a^2``): ``x = t v`` with
  ``t^2 = c^2 / |v|^2``, and the entries of D outside row k are ``(t^2 - 1) u_i u_j``, so
  ``|triu D|^2 = c^4 a^2 / |v|^2 + (d / |v|^2)^2 |triu(u u^T)|^2
  < c^2 a^2 - c^2 a^2 d / |v|^2 + d^2 (1 + c^-2) / 2``, which is at most ``c^2 a^2`` when
  ``(c^2 + 1)(c^2 + a^2) <= 2 c^4``, i.e. for every ``a <= 1`` once ``c^2 >= 1 + sqrt 2``,
  and otherwise at most ``c^2 + (1 + c^-2) / 2``.

So ``s = c`` for ``c >= sqrt(1 + sqrt 2)`` (about 1.554; attained by a user whose vector
reaches norm c with the rating), and below that ``min(2c, sqrt(c^2 + (1 + c^-2) / 2))``,
where ``2c`` bounds ``|D|_F <= |x| |x - y| + |x - y| |y|`` (the projection onto the ball
never increases distances, so ``|x - y| <= 1``). Adding or removing a whole user changes
the triangle by ``|triu(x x^T)| = sqrt((|x|^4 + sum_i x_i^4) / 2)``, and with entries in
[0, 1] ``sum_i x_i^4 <= |x|^2 min(1, |x|^2)``: at most ``c sqrt((c^2 + 1) / 2)`` for
``c >= 1`` (reached by a user with ``c^2`` entries of 1) and ``c^2`` below. The
user-level multiplier is ``sigma * s`` over that.
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
    if bound**2 >= 1.0 + math.sqrt(2.0):
        return bound
    return min(2.0 * bound, math.sqrt(bound**2 + (1.0 + bound**-2) / 2.0))


def user_sensitivity(bound: float) -> float:
    """How far adding or removing one user moves the upper triangle of the sum, at most."""
    if bound <= 1.0:
        return bound**2
    return bound * math.sqrt((bound**2 + 1.0) / 2.0)


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
    user_multiplier = noise_multiplier * record_sensitivity(bound) / user_sensitivity(bound)
    return PersistentAccountant(mechanism, [(user_multiplier, 1.0, 1)]).epsilon(delta)
