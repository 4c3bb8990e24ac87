"""The item-item model (``recommender = 'ease'``): EASE (Steck, 2019), fitted in closed
form from the co-occurrence of ratings summed over the clients
(:mod:`fedrec.privacy.item_cooccurrence`). A user's score of an item is their row of
:func:`~fedrec.privacy.rated_items.interaction_matrix` (likes, and dislikes at the
fit's dislike weight, each rating weighted by how recent it is: :class:`Recency`) times
the item's column of the weights: the user needs only their own ratings, on their
device, and nothing of theirs is trained or sent after the one release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...models.item_tables import catalog_order
from ...privacy.rated_items import interaction_matrix

ITEM_WEIGHTS = "ease.item-weights"  # the fitted items x items weights, in catalog order
DISLIKE_WEIGHT = "ease.dislike-weight"  # the fit's dislike weight (one value); absent in older files: 0
RECENCY = "ease.recency"  # (half-life, floor) of the users' rows when scored; absent in older files: none


@dataclass(frozen=True)
class Recency:
    """A user's ratings weighted by how recent they are when their row is scored (not in
    the release, whose sensitivity assumes entries of at most 1): ``floor + (1 - floor) *
    0.5 ** (age / half_life)``, ``age`` the number of the user's ratings after this one
    (0 for the latest). A half-life of 0 weighs every rating alike.
    """

    half_life: float = 0.0
    floor: float = 1.0

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray], source: str) -> Recency:
        """The recency an ease model's users are scored with (none when not stored)."""
        if RECENCY not in arrays:
            return cls()
        stored = np.asarray(arrays[RECENCY], dtype=np.float64).ravel()
        if stored.shape != (2,) or not (stored[0] >= 0.0 and 0.0 <= stored[1] <= 1.0):
            raise ValueError(
                f"{source}: '{RECENCY}' must be a half-life >= 0 and a floor in [0, 1], not {stored.tolist()}"
            )
        return cls(float(stored[0]), float(stored[1]))

    def array(self) -> np.ndarray:
        """As stored beside the weights."""
        return np.array([self.half_life, self.floor], np.float32)

    def weights(self, interactions: pd.DataFrame) -> np.ndarray:
        """Each row's weight: ages counted per user in timestamp order (ties, and frames
        without timestamps, in row order).
        """
        if not self.half_life:
            return np.ones(len(interactions))
        stamps = interactions["timestamp"].to_numpy() if "timestamp" in interactions else np.zeros(len(interactions))
        order = np.lexsort((np.arange(len(interactions)), stamps, interactions["user"].to_numpy()))
        ages = np.empty(len(interactions))
        ages[order] = interactions.iloc[order].groupby("user", sort=False).cumcount(ascending=False).to_numpy()
        return self.floor + (1.0 - self.floor) * 0.5 ** (ages / self.half_life)


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


def dislike_weight_of(arrays: Mapping[str, np.ndarray], source: str) -> float:
    """The dislike weight an ease model was fitted with (0, likes only, when not stored)."""
    if DISLIKE_WEIGHT not in arrays:
        return 0.0
    stored = np.asarray(arrays[DISLIKE_WEIGHT], dtype=np.float64).ravel()
    if stored.shape != (1,) or not 0.0 <= stored[0] <= 1.0:
        raise ValueError(f"{source}: '{DISLIKE_WEIGHT}' must be one value in [0, 1], not {stored.tolist()}")
    return float(stored[0])


def _checked_weights(weights: np.ndarray, num_items: int, source: str) -> np.ndarray:
    """``weights`` as float64 if they are items x items for a catalog of ``num_items``."""
    if weights.shape != (num_items, num_items):
        raise ValueError(f"{source}: item-item weights of shape {weights.shape}; the catalog has {num_items} items")
    return weights.astype(np.float64)


class ItemItemScores:
    """An ease run's arrays scoring the catalog for ``users``, each from their own ratings
    in ``interactions`` (a retriever: see :mod:`.retriever`).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        catalog: pd.Series,
        interactions: pd.DataFrame,
        like_threshold: float,
        users: list[str],
        source: str,
    ) -> None:
        self.items = catalog_order(catalog)
        self.weights = _checked_weights(arrays[ITEM_WEIGHTS], len(self.items), source)
        self.item_row = {item: n for n, item in enumerate(self.items)}
        self.user_row = {user: n for n, user in enumerate(users)}
        dislike_weight = dislike_weight_of(arrays, source)
        interactions = interactions[interactions["user"].isin(self.user_row)]
        recency = Recency.of(arrays, source).weights(interactions)
        self.rows = interaction_matrix(interactions, like_threshold, dislike_weight, users, self.items, recency)

    def catalog_scores(self, user: str) -> np.ndarray:
        """Every catalog item's score for one of the users."""
        return self.rows[self.user_row[user]] @ self.weights
