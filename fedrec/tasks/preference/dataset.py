"""The preference task's view of a dataset: the examples each client holds, and the
central evaluation users. Built once per process and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ...config import DataConfig
from ...data.interactions import InteractionData, Source, load_interaction_data, read_table, validate
from ...data.partition import partition_users, sample_users
from .examples import ExampleSplit, PreferenceExample, split_examples
from .prompt import render_preference_prompt


@dataclass(frozen=True)
class CentralSplit:
    """The whole split, as the harness's central evaluation sees it."""

    data: InteractionData
    split: ExampleSplit
    eval_users: list[str]

    def held_out_examples(self, part: str = "test") -> list[PreferenceExample]:
        """Held-out examples (``part``: test or validation) of the central evaluation users."""
        held_out = self.split.held_out(part)
        return [ex for user in self.eval_users for ex in held_out.get(user, [])]

    def prompts(self, examples: list[PreferenceExample]) -> list[str]:
        """Rendered prompt text of each example."""
        names = self.data.prompt_names
        return [render_preference_prompt(ex, names, self.data.noun) for ex in examples]


@dataclass(frozen=True)
class FederatedData:
    """The split with the user group of each client."""

    central: CentralSplit
    partitions: list[list[str]]

    def train_examples(self, partition_id: int) -> list[PreferenceExample]:
        """Training examples of the users of one client."""
        return [ex for user in self.users(partition_id) for ex in self.central.split.train[user]]

    def held_out_examples(self, partition_id: int, part: str = "test") -> list[PreferenceExample]:
        """Held-out examples (``part``: test or validation) of the users of one client."""
        held_out = self.central.split.held_out(part)
        return [ex for user in self.users(partition_id) for ex in held_out.get(user, [])]

    def prompts(self, examples: list[PreferenceExample]) -> list[str]:
        """Rendered prompt text of each example."""
        return self.central.prompts(examples)

    def train_interactions(self, partition_id: int) -> pd.DataFrame:
        """Training interactions (neither validation nor test) of the users of one client."""
        train = self.central.split.train_interactions
        return train[train["user"].isin(set(self.users(partition_id)))]

    def users(self, partition_id: int) -> list[str]:
        """The users of one client."""
        if not 0 <= partition_id < len(self.partitions):
            raise ValueError(f"partition {partition_id} does not exist ({len(self.partitions)} partitions)")
        return self.partitions[partition_id]


def prompt_data(data: DataConfig) -> InteractionData:
    """The dataset of ``data``, its items named in prompts as ``item-text`` says."""
    return replace(load_interaction_data(data.dataset, data.items_path), item_text=data.item_text)


@functools.lru_cache(maxsize=4)
def load_split(data: DataConfig, seed: int, eval_users: int) -> CentralSplit:
    """Load and split the dataset, and draw ``eval_users`` central evaluation users (cached)."""
    interactions = prompt_data(data)
    if data.max_users:
        all_users = sorted(interactions.interactions["user"].unique().tolist())
        keep = set(sample_users(all_users, data.max_users, seed))
        interactions = replace(
            interactions, interactions=interactions.interactions[interactions.interactions["user"].isin(keep)]
        )
    split = _split(interactions, data)
    return CentralSplit(interactions, split, sample_users(split.users, eval_users, seed))


def _split(interactions: InteractionData, data: DataConfig) -> ExampleSplit:
    return split_examples(
        interactions,
        history_length=data.history_length,
        test_interactions=data.test_interactions,
        validation_interactions=data.validation_interactions,
        like_threshold=data.like_threshold,
        train_examples_per_user=data.train_examples_per_user,
        targets_per_history=data.targets_per_history,
    )


@functools.lru_cache(maxsize=4)
def load_federated_data(data: DataConfig, seed: int, eval_users: int, num_partitions: int) -> FederatedData:
    """The split with users assigned to ``num_partitions`` clients (cached)."""
    central = load_split(data, seed, eval_users)
    users = sorted(central.split.train)
    partitions = partition_users(
        users, num_partitions, data.partitioner, seed, data.skew_alpha, like_rates(central.split, users)
    )
    return FederatedData(central, partitions)


def like_rates(split: ExampleSplit, users: list[str]) -> list[float]:
    """Each user's like rate over their training examples (0.5 without any)."""
    return [float(np.mean([ex.label for ex in split.train[u]])) if split.train[u] else 0.5 for u in users]


@functools.lru_cache(maxsize=4)
def load_node_data(data: DataConfig, data_path: str) -> FederatedData:
    """A deployed node's own interactions file (``user,item,rating,timestamp``; node
    config ``data-path``) as one partition, its items checked against the run's catalog.
    """
    catalog = load_interaction_data(data.dataset, data.items_path)
    path = Path(data_path).expanduser()
    catalog_source = Source(f"the catalog of '{data.dataset}'", None)
    interactions = validate(read_table(path), catalog.items, Source.of(path), catalog_source)
    interactions = replace(interactions, noun=catalog.noun, item_text=data.item_text)
    split = _split(interactions, data)
    return FederatedData(CentralSplit(interactions, split, split.users), [sorted(split.train)])
