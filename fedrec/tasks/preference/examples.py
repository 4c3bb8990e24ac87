"""Per-user chronological split and preference examples.

Each user's interactions are ordered by time; the last ``test_interactions`` are held
out. A training example's history holds only earlier training interactions, and a test
example's history holds only the user's training interactions, so no test interaction
is ever seen in training or in a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Training, validation and test examples per user, plus the training interactions
    (the ones training examples are built from: neither validation nor test).
    """

    train: dict[str, list[PreferenceExample]]
    test: dict[str, list[PreferenceExample]]
    train_interactions: pd.DataFrame
    validation: dict[str, list[PreferenceExample]] = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        """Users with at least one test example, sorted."""
        return sorted(u for u, ex in self.test.items() if ex)

    def held_out(self, part: str) -> dict[str, list[PreferenceExample]]:
        """The held-out examples of ``part`` (``test`` or ``validation``) per user."""
        if part not in ("test", "validation"):
            raise ValueError(f"held-out part must be test or validation, got {part!r}")
        return self.test if part == "test" else self.validation


def split_examples(
    data: InteractionData,
    history_length: int,
    test_interactions: int = 1,
    like_threshold: float = 3.0,
    train_examples_per_user: int = 0,
    targets_per_history: int = 1,
    validation_interactions: int = 0,
) -> ExampleSplit:
    """Split each user's interactions chronologically (training, then
    ``validation_interactions``, then ``test_interactions``) and build examples.

    Training examples need ``history_length`` earlier training interactions;
    ``train_examples_per_user`` > 0 keeps each user's most recent ones only. With
    ``targets_per_history`` = m > 1, consecutive blocks of m targets (counted back from
    the latest) share the history that precedes the block, so their prompts share a
    prefix that the scorer computes once. A held-out example's history is the
    ``history_length`` interactions before its part: validation sees training
    interactions only, test also sees the validation ones (known by then).
    """
    if targets_per_history < 1:
        raise ValueError(f"targets-per-history must be at least 1, got {targets_per_history}")
    inter = data.interactions
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user"].to_numpy()))
    inter = inter.iloc[order]
    split = ExampleSplit({}, {}, pd.DataFrame(), {})
    train_rows = []
    for user, frame in inter.groupby("user", sort=True):
        seq = list(zip(frame["item"].tolist(), (frame["rating"].to_numpy() > like_threshold).tolist(), strict=True))
        n_test = max(len(seq) - test_interactions, 0)
        n_train = max(n_test - validation_interactions, 0)
        train_rows.append(frame.iloc[:n_train])
        examples = _training_examples(str(user), seq, n_train, history_length, targets_per_history)
        split.train[str(user)] = examples[-train_examples_per_user:] if train_examples_per_user else examples
        split.validation[str(user)] = _held_out(str(user), seq, n_train, n_test, history_length)
        split.test[str(user)] = _held_out(str(user), seq, n_test, len(seq), history_length)
    return ExampleSplit(split.train, split.test, pd.concat(train_rows, ignore_index=True), split.validation)


def _training_examples(
    user: str, seq: list[tuple[str, bool]], n_train: int, history_length: int, targets_per_history: int
) -> list[PreferenceExample]:
    anchors = {
        i: n_train - ((n_train - 1 - i) // targets_per_history + 1) * targets_per_history for i in range(n_train)
    }
    return [
        PreferenceExample(user, seq[i][0], int(seq[i][1]), tuple(seq[anchors[i] - history_length : anchors[i]]))
        for i in range(history_length, n_train)
        if anchors[i] >= history_length
    ]


def _held_out(
    user: str, seq: list[tuple[str, bool]], start: int, end: int, history_length: int
) -> list[PreferenceExample]:
    """Examples of interactions ``start..end``, after the history before ``start`` (none without one)."""
    history = tuple(seq[max(start - history_length, 0) : start])
    return [PreferenceExample(user, seq[i][0], int(seq[i][1]), history) for i in range(start, end)] if history else []
