"""Non-learned preference baselines, computed without test interactions, measured like
the model (:func:`~fedrec.tasks.preference.evaluation.preference_metrics`).

* ``user-like-rate``: the share of liked items in the prompt's own history;
* ``item-like-rate``: the item's like rate over training interactions (smoothed);
* ``user+item``: the sum of the two logits, untuned;
* ``most-popular``: the item's number of training ratings.
"""

from __future__ import annotations

import numpy as np

from .evaluation import preference_metrics
from .examples import ExampleSplit, PreferenceExample
from .rates import PRIOR_STRENGTH, logit


def preference_baselines(
    split: ExampleSplit, examples: list[PreferenceExample], like_threshold: float = 3.0
) -> dict[str, dict[str, float | int]]:
    """Each baseline's metrics on ``examples`` (AUC, UAUC and their standard errors)."""
    scores = baseline_scores(split, examples, like_threshold)
    return {name: preference_metrics(examples, values) for name, values in scores.items()}


def baseline_scores(
    split: ExampleSplit, examples: list[PreferenceExample], like_threshold: float = 3.0
) -> dict[str, np.ndarray]:
    """Each baseline's score of every example."""
    train = split.train_interactions
    liked = (train["rating"] > like_threshold).astype(float)
    prior = float(liked.mean())
    stats = liked.groupby(train["item"]).agg(["sum", "count"])
    likes = stats["sum"].to_dict()
    counts = stats["count"].to_dict()
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
        "user-like-rate": user_rate,
        "item-like-rate": item_rate,
        "user+item": logit(user_smoothed) + logit(item_rate),
        "most-popular": popularity,
    }
