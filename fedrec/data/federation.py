"""The federated view of a dataset: which users each client holds, and the central
evaluation users. Built once per process and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

from .examples import ExampleSplit, PreferenceExample, sample_users, split_examples
from .interactions import InteractionData, load_interaction_data, read_table, validate
from .partition import partition_users
from .prompts import render_preference_prompt


@dataclass(frozen=True)
class DataSettings:
    """Everything that decides the examples and their assignment to clients."""

    dataset: str = "ml-100k"
    items_path: str = ""
    max_users: int = 0
    like_threshold: float = 3.0
    history_length: int = 10
    test_interactions: int = 1
    train_examples_per_user: int = 0
    targets_per_history: int = 1
    partitioner: str = "iid"
    skew_alpha: float = 0.5
    eval_users: int = 300
    seed: int = 42


@dataclass(frozen=True)
class CentralSplit:
    """The whole split, as the harness's central evaluation sees it."""

    data: InteractionData
    split: ExampleSplit
    eval_users: list[str]

    def test_examples(self) -> list[PreferenceExample]:
        """Held-out examples of the central evaluation users."""
        return [ex for user in self.eval_users for ex in self.split.test[user]]

    def prompts(self, examples: list[PreferenceExample]) -> list[str]:
        """Rendered prompt text of each example."""
        titles = self.data.titles()
        return [render_preference_prompt(ex, titles, self.data.noun) for ex in examples]


@dataclass(frozen=True)
class FederatedData:
    """The split with the user group of each client."""

    central: CentralSplit
    partitions: list[list[str]]

    def train_examples(self, partition_id: int) -> list[PreferenceExample]:
        """Training examples of the users of one client."""
        return [ex for user in self._users(partition_id) for ex in self.central.split.train[user]]

    def test_examples(self, partition_id: int) -> list[PreferenceExample]:
        """Held-out examples of the users of one client."""
        return [ex for user in self._users(partition_id) for ex in self.central.split.test[user]]

    def prompts(self, examples: list[PreferenceExample]) -> list[str]:
        """Rendered prompt text of each example."""
        return self.central.prompts(examples)

    def _users(self, partition_id: int) -> list[str]:
        if not 0 <= partition_id < len(self.partitions):
            raise ValueError(f"partition {partition_id} does not exist ({len(self.partitions)} partitions)")
        return self.partitions[partition_id]


@functools.lru_cache(maxsize=4)
def load_split(settings: DataSettings) -> CentralSplit:
    """Load and split the dataset, and draw the central evaluation users (cached)."""
    data = load_interaction_data(settings.dataset, settings.items_path)
    if settings.max_users:
        all_users = sorted(data.interactions["user"].unique().tolist())
        keep = set(sample_users(all_users, settings.max_users, settings.seed))
        data = replace(data, interactions=data.interactions[data.interactions["user"].isin(keep)])
    split = _split(data, settings)
    return CentralSplit(data, split, sample_users(split.users, settings.eval_users, settings.seed))


def _split(data: InteractionData, settings: DataSettings) -> ExampleSplit:
    return split_examples(
        data,
        history_length=settings.history_length,
        test_interactions=settings.test_interactions,
        like_threshold=settings.like_threshold,
        train_examples_per_user=settings.train_examples_per_user,
        targets_per_history=settings.targets_per_history,
    )


@functools.lru_cache(maxsize=4)
def load_federated_data(settings: DataSettings, num_partitions: int) -> FederatedData:
    """The split with users assigned to ``num_partitions`` clients (cached)."""
    central = load_split(settings)
    users = sorted(central.split.train)
    partitions = partition_users(
        central.split, users, num_partitions, settings.partitioner, settings.seed, settings.skew_alpha
    )
    return FederatedData(central, partitions)


@functools.lru_cache(maxsize=4)
def load_node_data(settings: DataSettings, data_path: str) -> FederatedData:
    """A deployed node's own interactions file (``user,item,rating,timestamp``; node
    config ``data-path``) as one partition, its items checked against the run's catalog.
    """
    catalog = load_interaction_data(settings.dataset, settings.items_path)
    path = Path(data_path).expanduser()
    data = validate(read_table(path), catalog.items, str(path), f"the catalog of '{settings.dataset}'")
    data = replace(data, noun=catalog.noun)
    split = _split(data, settings)
    return FederatedData(CentralSplit(data, split, split.users), [sorted(split.train)])
