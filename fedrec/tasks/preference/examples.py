"""Per-user chronological split and preference examples.

Each user's interactions are ordered by time; the last ``test_interactions`` are held
out. A training example's history holds only earlier training interactions, and a test
example's history holds only the user's training interactions, so no test interaction
is ever seen in training or in a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...data.interactions import InteractionData


@dataclass(frozen=True)
class PreferenceExample:
    """One question: will ``user`` like ``item``, given ``history`` of (item, liked), oldest first."""

    user: str
    item: str
    label: int
    history: tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class ExampleSplit:
    """Training and test examples per user, plus the training interactions."""

    train: dict[str, list[PreferenceExample]]
    test: dict[str, list[PreferenceExample]]
    train_interactions: pd.DataFrame

    @property
    def users(self) -> list[str]:
        """Users with at least one test example, sorted."""
        return sorted(u for u, ex in self.test.items() if ex)


def split_examples(
    data: InteractionData,
    history_length: int,
    test_interactions: int = 1,
    like_threshold: float = 3.0,
    train_examples_per_user: int = 0,
    targets_per_history: int = 1,
) -> ExampleSplit:
    """Split each user's interactions chronologically and build examples.

    Training examples need ``history_length`` earlier training interactions;
    ``train_examples_per_user`` > 0 keeps each user's most recent ones only. With
    ``targets_per_history`` = m > 1, consecutive blocks of m targets (counted back from
    the latest) share the history that precedes the block, so their prompts share a
    prefix that the scorer computes once.
    """
    if targets_per_history < 1:
        raise ValueError(f"targets-per-history must be at least 1, got {targets_per_history}")
    inter = data.interactions
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user"].to_numpy()))
    inter = inter.iloc[order]
    train: dict[str, list[PreferenceExample]] = {}
    test: dict[str, list[PreferenceExample]] = {}
    train_rows = []
    for user, frame in inter.groupby("user", sort=True):
        items = frame["item"].tolist()
        liked = (frame["rating"].to_numpy() > like_threshold).tolist()
        n_train = max(len(items) - test_interactions, 0)
        train_rows.append(frame.iloc[:n_train])
        seq = list(zip(items, liked, strict=True))
        anchors = {
            i: n_train - ((n_train - 1 - i) // targets_per_history + 1) * targets_per_history for i in range(n_train)
        }
        user_train = [
            PreferenceExample(str(user), items[i], int(liked[i]), tuple(seq[anchors[i] - history_length : anchors[i]]))
            for i in range(history_length, n_train)
            if anchors[i] >= history_length
        ]
        if train_examples_per_user:
            user_train = user_train[-train_examples_per_user:]
        history = tuple(seq[max(n_train - history_length, 0) : n_train])
        train[str(user)] = user_train
        test[str(user)] = (
            [PreferenceExample(str(user), items[i], int(liked[i]), history) for i in range(n_train, len(items))]
            if history
            else []
        )
    return ExampleSplit(train, test, pd.concat(train_rows, ignore_index=True))
