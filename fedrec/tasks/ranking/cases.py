"""Ranking cases: leave-one-out top-K recommendation.

A user's target is their held-out interaction when it is a like (users whose held-out
interaction is a dislike have no ranking case), so the target is never a training
example or in any prompt. It is ranked among ``num_negatives`` items the user never
rated, drawn uniformly with a generator seeded by (seed, user), so every method sees the
same candidates. The history is the preference task's test history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ...data.interactions import InteractionData
from ..preference.examples import ExampleSplit, PreferenceExample


@dataclass(frozen=True)
class RankingCase:
    """One user's target (``candidates[0]``) and sampled negatives, with the history."""

    user: str
    candidates: tuple[str, ...]
    history: tuple[tuple[str, bool], ...]

    def examples(self) -> list[PreferenceExample]:
        """One preference question per candidate (label 1 for the target)."""
        return [PreferenceExample(self.user, item, int(i == 0), self.history) for i, item in enumerate(self.candidates)]


def _user_seed(seed: int, user: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{user}".encode()).digest()[:8], "little")


def ranking_cases(
    data: InteractionData,
    split: ExampleSplit,
    users: list[str],
    num_negatives: int = 99,
    seed: int = 0,
    part: str = "test",
) -> list[RankingCase]:
    """The ranking case of each of ``users`` whose last held-out interaction of ``part``
    (test or validation) is liked.
    """
    catalog = np.array(sorted(data.items["item"].astype(str)))
    rated = data.interactions.groupby("user")["item"].agg(set).to_dict()
    cases = []
    for user in users:
        positives = [ex for ex in split.held_out(part).get(user, []) if ex.label == 1]
        if not positives:
            continue
        target = positives[-1]
        unrated = catalog[~np.isin(catalog, list(rated.get(user, set())))]
        if len(unrated) < num_negatives:
            raise ValueError(f"user {user} has only {len(unrated)} unrated items; {num_negatives} negatives asked")
        rng = np.random.default_rng(_user_seed(seed, user))
        negatives = rng.choice(unrated, size=num_negatives, replace=False).tolist()
        cases.append(RankingCase(user, (target.item, *negatives), target.history))
    return cases
