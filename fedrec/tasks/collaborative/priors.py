"""Priors added to the collaborative model's scores.

They come from federated item statistics and a user's own history, both available where
the user's scores are computed:

* popularity, ``log(1 + an item's rating count)``, for ranking unrated items;
* like-rate logits, ``logit(the user's like rate) + logit(the item's like rate)``, for
  preference among rated items (the ``user+item`` baseline, computed privately: the
  item's rate from the noised federated counts, the user's from the ratings in the
  question's own history window on the device, both smoothed towards the federated
  overall rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..preference.examples import PreferenceExample
from ..preference.rates import PRIOR_STRENGTH, logit

RATE_FLOOR = 1e-3  # noisy counts can give rates outside (0, 1): kept within [floor, 1 - floor]


STATISTICS_FILE = "item-statistics.npz"  # a run's summed counts, in its results folder


@dataclass(frozen=True)
class ItemCounts:
    """Each item's (noised) number of ratings and of likes, in catalog order, and the
    std of the noise on each count (0: exact).
    """

    ratings: np.ndarray
    likes: np.ndarray
    noise_std: float = 0.0

    def popularity(self) -> np.ndarray:
        """``log(1 + ratings)``, negative noisy counts read as 0."""
        return np.log1p(np.maximum(self.ratings, 0.0))

    def overall_like_rate(self) -> float:
        """The share of likes among all ratings."""
        rate = float(np.maximum(self.likes, 0.0).sum() / max(float(np.maximum(self.ratings, 0.0).sum()), 1.0))
        return float(np.clip(rate, RATE_FLOOR, 1 - RATE_FLOOR))

    def like_rates(self) -> np.ndarray:
        """Each item's like rate, smoothed towards the overall rate by ``PRIOR_STRENGTH``
        pseudo-ratings plus the noise's std (noisier counts lean more on the prior).
        """
        return smoothed_rates(self.likes, self.ratings, self.overall_like_rate(), PRIOR_STRENGTH + self.noise_std)


def smoothed_rates(likes: np.ndarray, ratings: np.ndarray, prior: float, strength: float) -> np.ndarray:
    """``(likes + strength * prior) / (ratings + strength)``, negative noisy counts read as 0."""
    likes, ratings = np.maximum(likes, 0.0), np.maximum(ratings, 0.0)
    rates = (np.minimum(likes, ratings) + strength * prior) / (ratings + strength)
    return np.clip(rates, RATE_FLOOR, 1 - RATE_FLOOR)


def like_rate_logits(counts: ItemCounts, examples: list[PreferenceExample], item_rows: list[int]) -> np.ndarray:
    """``logit(user rate) + logit(item rate)`` of each example: the user's rate over the
    example's history window, the item's (row ``item_rows[n]``) from ``counts``.
    """
    prior = counts.overall_like_rate()
    likes = np.array([sum(liked for _, liked in ex.history) for ex in examples], dtype=float)
    seen = np.array([len(ex.history) for ex in examples], dtype=float)
    users = smoothed_rates(likes, seen, prior, PRIOR_STRENGTH)
    return logit(users) + logit(counts.like_rates()[np.asarray(item_rows, dtype=int)])
