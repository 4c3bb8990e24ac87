"""The item-item model (``recommender = 'ease'``): EASE (Steck, 2019), fitted in closed
form from the co-occurrence of likes summed over the clients
(:mod:`fedrec.privacy.item_cooccurrence`). A user's score of an item is their liked-items
vector times the item's column of the weights: the user needs only their own likes, on
their device, and nothing of theirs is trained or sent after the one release.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .likes import catalog_order

ITEM_WEIGHTS = "ease.item-weights"  # the fitted items x items weights, in catalog order


def fit_ease(gram: np.ndarray, l2: float, rank: int = 0) -> np.ndarray:
    """EASE's weights ``B = I - P / diag(P)`` with ``P = (G + l2 I)^-1`` and a zero
    diagonal. With ``rank`` > 0, ``G`` is first replaced by its best rank-``rank``
    approximation (its top eigenpairs): post-processing that removes most of a noised
    Gram's noise, which spreads over every direction while the likes' structure does not.
    """
    if rank:
        values, vectors = np.linalg.eigh(gram)
        top = vectors[:, -rank:]
        gram = (top * values[-rank:]) @ top.T
    precision = np.linalg.inv(gram + l2 * np.eye(len(gram)))
    weights = -precision / np.diag(precision)  # column j divided by P_jj
    np.fill_diagonal(weights, 0.0)
    return weights


def _liked_matrix(interactions: pd.DataFrame, like_threshold: float, users: list[str], items: list[str]) -> np.ndarray:
    """A 0/1 row per user of ``users``: the items (``items`` order) they like in ``interactions``."""
    user_row = {user: n for n, user in enumerate(users)}
    item_row = {item: n for n, item in enumerate(items)}
    likes = interactions[(interactions["rating"] > like_threshold) & interactions["user"].isin(user_row)]
    matrix = np.zeros((len(users), len(items)))
    matrix[[user_row[u] for u in likes["user"]], [item_row[str(i)] for i in likes["item"]]] = 1.0
    return matrix


def _checked_weights(weights: np.ndarray, num_items: int, source: str) -> np.ndarray:
    """``weights`` as float64 if they are items x items for a catalog of ``num_items``."""
    if weights.shape != (num_items, num_items):
        raise ValueError(f"{source}: item-item weights of shape {weights.shape}; the catalog has {num_items} items")
    return weights.astype(np.float64)


class ItemItemScores:
    """An ease run's weights scoring the catalog for ``users``, each from their own likes
    in ``interactions`` (a retriever: see :mod:`.retriever`).
    """

    def __init__(
        self,
        weights: np.ndarray,
        catalog: pd.Series,
        interactions: pd.DataFrame,
        like_threshold: float,
        users: list[str],
        source: str,
    ) -> None:
        self.items = catalog_order(catalog)
        self.weights = _checked_weights(weights, len(self.items), source)
        self.item_row = {item: n for n, item in enumerate(self.items)}
        self.user_row = {user: n for n, user in enumerate(users)}
        self.likes = _liked_matrix(interactions, like_threshold, users, self.items)

    def catalog_scores(self, user: str) -> np.ndarray:
        """Every catalog item's score for one of the users."""
        return self.likes[self.user_row[user]] @ self.weights
