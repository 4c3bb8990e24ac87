"""Non-learned preference baselines, computed without test interactions.

* ``user-like-rate``: the share of liked items in the prompt's own history;
* ``item-like-rate``: the item's like rate over training interactions (smoothed);
* ``user+item``: the sum of the two logits, untuned;
* ``most-popular``: the item's number of training ratings.
"""

from __future__ import annotations

import numpy as np

from ..metrics import roc_auc
from .examples import ExampleSplit, PreferenceExample

PRIOR_STRENGTH = 5.0


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def preference_baselines(
    split: ExampleSplit, examples: list[PreferenceExample], like_threshold: float = 3.0
) -> dict[str, float]:
    """AUC of each baseline on ``examples``."""
    train = split.train_interactions
    liked = (train["rating"] > like_threshold).astype(float)
    prior = float(liked.mean())
    stats = liked.groupby(train["item"]).agg(["sum", "count"])
    likes = stats["sum"].to_dict()
    counts = stats["count"].to_dict()
    labels = np.array([ex.label for ex in examples])
    item_rate = np.array(
        [
            (likes.get(ex.item, 0.0) + PRIOR_STRENGTH * prior) / (counts.get(ex.item, 0) + PRIOR_STRENGTH)
            for ex in examples
        ]
    )
    user_likes = np.array([sum(liked for _, liked in ex.history) for ex in examples], dtype=float)
    user_len = np.array([len(ex.history) for ex in examples], dtype=float)
    user_rate = user_likes / np.maximum(user_len, 1.0)
    user_smoothed = (user_likes + PRIOR_STRENGTH * prior) / (user_len + PRIOR_STRENGTH)
    popularity = np.array([counts.get(ex.item, 0) for ex in examples], dtype=float)
    return {
        "user-like-rate": roc_auc(labels, user_rate),
        "item-like-rate": roc_auc(labels, item_rate),
        "user+item": roc_auc(labels, _logit(user_smoothed) + _logit(item_rate)),
        "most-popular": roc_auc(labels, popularity),
    }
