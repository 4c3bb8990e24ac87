"""A user's rated items as one vector: what the item-item release
(:mod:`.item_cooccurrence`) is made of and what an item-item model scores. NumPy only, so
that scoring on a device loads no training stack.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def interaction_matrix(
    interactions: pd.DataFrame,
    like_threshold: float,
    dislike_weight: float,
    users: list[str],
    items: list[str],
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """A row per user of ``users`` (columns in ``items`` order): 1 for each item they like
    in ``interactions``, ``dislike_weight`` for each item they rated without liking, each
    times its entry of ``scale`` (one per row of ``interactions``) when given.
    """
    row = {user: n for n, user in enumerate(users)}
    column = {item: n for n, item in enumerate(items)}
    weights = np.where(interactions["rating"] > like_threshold, 1.0, dislike_weight)
    if scale is not None:
        weights = weights * scale
    known = interactions["user"].isin(row).to_numpy() & (weights > 0)
    rated = interactions[known]
    matrix = np.zeros((len(users), len(items)))
    matrix[[row[u] for u in rated["user"]], [column[str(i)] for i in rated["item"]]] = weights[known]
    return matrix


def interaction_vectors(
    interactions: pd.DataFrame, like_threshold: float, dislike_weight: float, items: list[str], bound: float
) -> np.ndarray:
    """One row per user of ``interactions`` with a nonzero entry: their
    :func:`interaction_matrix` row scaled to L2 norm at most ``bound``.
    """
    matrix = interaction_matrix(
        interactions, like_threshold, dislike_weight, sorted(interactions["user"].unique()), items
    )
    vectors = matrix[matrix.any(axis=1)]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * np.minimum(1.0, bound / np.maximum(norms, 1e-12))
