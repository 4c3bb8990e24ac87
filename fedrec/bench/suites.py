"""Benchmark suites: several runs on the same data, seeds and budget, one table each.
Each point is a label and config keys over its suite's preset and base keys; a point
may read the item tables of an earlier point's collaborative run (its retriever).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    """One run of a suite: a label and its config keys over the suite's base."""

    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    item_tables_from: str = ""  # label of an earlier 'mf' or 'ease' point: its model file is the item-tables


@dataclass(frozen=True)
class Suite:
    """A preset, keys shared by every point, and the points."""

    preset: str
    base: Mapping[str, Any]
    points: tuple[Point, ...]
    description: str

    def __post_init__(self) -> None:
        labels: list[str] = []
        for point in self.points:
            if point.item_tables_from and point.item_tables_from not in labels:
                source = point.item_tables_from
                raise ValueError(f"point '{point.label}' reads the item tables of '{source}': no earlier point")
            labels.append(point.label)


NON_PRIVATE_LEARNING_RATE = 0.03  # the demo's 0.3 is tuned for noisy DP steps; without noise it diverges


def _with_and_without_dp(label: str, overrides: Mapping[str, Any]) -> tuple[Point, Point]:
    non_private = {**overrides, "dp": False, "learning-rate": NON_PRIVATE_LEARNING_RATE}
    return Point(f"{label}, no DP", non_private), Point(f"{label}, DP", dict(overrides))


_STRATEGY_POINTS = (
    ("FedAvg-LoRA", {"strategy": "fedavg"}),
    ("FFA-LoRA", {"strategy": "ffa-lora"}),
    ("FedAdam (B only)", {"strategy": "fedadam", "lora-freeze-a": True}),
    ("FFA-LoRA ranks 2,4", {"strategy": "ffa-lora", "lora-ranks": "2,4"}),
)

_RETRIEVER = "federated MF, DP (the retriever)"
_CPU_BASE = {"max-users": 300, "batch-size": 60, "ranking-users": 20}
_PER_USER = {
    "partitioner": "user",
    "num-clients": 300,
    "fraction-train": 0.1,
    "dp": False,
    "learning-rate": NON_PRIVATE_LEARNING_RATE,
}

_RERANK_BASE = {"eval-users": 100, "test-interactions": 5, "ranking-users": 100, "max-weight": 100_000.0}
_RERANK_RETRIEVER = Point(
    _RETRIEVER, {"recommender": "mf", "strategy": "fedavg", "num-server-rounds": 10, "client-cpus": 1.0}
)


_EASE_RETRIEVER = Point(
    "item-item model (ease), DP (the retriever)", {"recommender": "ease", "num-server-rounds": 0, "client-cpus": 1.0}
)


def _reranker(llm_input: str, objective: str) -> Point:
    """An LLM of ``llm_input`` trained with ``objective`` reranking the retriever's top 20."""
    return Point(
        f"LLM {llm_input}, {objective} loss, reranks the top 20",
        {"llm-input": llm_input, "objective": objective, "rerank-top": 20},
        item_tables_from=_RETRIEVER,
    )


SUITES: dict[str, Suite] = {
    # CPU-sized: the demo (SmolLM2-135M, MovieLens-100K, 2 clients, 5 rounds, record-level
    # epsilon 8, SecAgg+) on the first 300 users, batch 60 (sampling rate ~0.13).
    "strategies": Suite(
        preset="demo",
        base={"max-users": 300, "batch-size": 60},
        points=(
            *(p for label, o in _STRATEGY_POINTS for p in _with_and_without_dp(label, o)),
            Point(
                "FFA-LoRA, DP + client-level DP (distributed)",
                {
                    "strategy": "ffa-lora",
                    "client-dp": True,
                    "client-dp-clip": 0.5,
                    "client-dp-noise-multiplier": 0.5,
                    "client-dp-noise": "distributed",
                },
            ),
        ),
        description="demo preset on 300 users (CPU-sized)",
    ),
    # Privacy-utility on the 2-core CPU: the demo's FFA-LoRA at record-level epsilon 1, 3, 8
    # and without DP, a centralized non-private LoRA (one client holding every user), and
    # 4 clients at epsilon 8; preference AUC each round, HR@10/NDCG@10 of 20 users (100
    # candidates each) at rounds 0 and 5.
    "cpu": Suite(
        preset="demo",
        base=_CPU_BASE,
        points=(
            Point("FFA-LoRA, epsilon 1", {"target-epsilon": 1.0}),
            Point("FFA-LoRA, epsilon 3", {"target-epsilon": 3.0}),
            Point("FFA-LoRA, epsilon 8", {"target-epsilon": 8.0}),
            Point("FFA-LoRA, no DP", {"dp": False, "learning-rate": NON_PRIVATE_LEARNING_RATE}),
            Point(
                "centralized LoRA, no DP",
                {
                    "num-clients": 1,
                    "dp": False,
                    "learning-rate": NON_PRIVATE_LEARNING_RATE,
                    "secure-aggregation": False,
                },
            ),
            Point("FFA-LoRA, epsilon 8, 4 clients", {"num-clients": 4}),
        ),
        description="demo preset on 300 users, ranking on 20 of them (CPU-sized)",
    ),
    # The other sweeps of the CPU-sized setting: clients per round (8 clients, batch 15 so
    # the sampling rate stays ~0.13), per-user clients (each user's device is a client;
    # client-level DP is then user-level DP) against the grouped reference, and LoRA rank.
    # The first two points ran with ranking (the suite skips finished points).
    "sweeps": Suite(
        preset="demo",
        base={**_CPU_BASE, "ranking-users": 0},  # AUC only: ranking costs more than the rounds on 2 cores
        points=(
            Point("2 clients, epsilon 8 (reference)", {}),
            *(
                Point(
                    f"8 clients, {n} per round, epsilon 8",
                    {"num-clients": 8, "batch-size": 15, "fraction-train": n / 8},
                )
                for n in (8, 4, 2)
            ),
            Point("per-user clients, 30 per round, no DP", _PER_USER),
            Point(
                "per-user clients, 30 per round, user-level DP",
                {**_PER_USER, "client-dp": True, "client-dp-clip": 0.5, "client-dp-noise-multiplier": 1.0},
            ),
            *(Point(f"LoRA rank {rank}, epsilon 8", {"lora-rank": rank, "lora-alpha": 2.0 * rank}) for rank in (8, 32)),
        ),
        description="demo preset on 300 users: clients per round, per-user clients, LoRA rank (CPU-sized)",
    ),
    # Retrieve, then rerank (issue 18): DP federated MF is the retriever (and gives the
    # hybrid LLM its item tables); an LLM reorders the MF's top 20 of every ranking list,
    # on the same clients, split and cases. 100 evaluation users x 5 held-out
    # interactions: an LLM ranking evaluation of 300 users takes over 15 min here.
    # 'rerank' is the headline within an hour: today's text LLM (preference loss) and the
    # best, the hybrid trained to rank. 'rerank-ablations' adds the other input x loss
    # pairs and hard negatives; run into the same --out, it keeps the headline's points.
    "rerank": Suite(
        preset="demo",
        base=_RERANK_BASE,
        points=(_RERANK_RETRIEVER, _reranker("text", "preference"), _reranker("hybrid", "ranking")),
        description="demo preset, DP federated MF retrieving, the text and the hybrid LLM reranking (CPU-sized)",
    ),
    # The same with the item-item model retrieving (the better private retriever): the text
    # LLM trained to rank reorders its top 20 (a hybrid's soft tokens need mf embeddings).
    "rerank-ease": Suite(
        preset="demo",
        base=_RERANK_BASE,
        points=(
            _EASE_RETRIEVER,
            Point(
                "LLM text, ranking loss, reranks the ease top 20",
                {"llm-input": "text", "objective": "ranking", "rerank-top": 20},
                item_tables_from=_EASE_RETRIEVER.label,
            ),
        ),
        description="demo preset, the DP item-item model retrieving, the text LLM (ranking loss) reranking (CPU-sized)",
    ),
    "rerank-ablations": Suite(
        preset="demo",
        base=_RERANK_BASE,
        points=(
            _RERANK_RETRIEVER,
            *(
                _reranker(llm_input, objective)
                for llm_input in ("text", "hybrid")
                for objective in ("preference", "ranking")
            ),
            # Hard negatives: the top 20 of 100 sampled candidates the LLM reranks lie in
            # about the top 20 % of a user's ~1,600 unrated items by the retriever.
            Point(
                "LLM hybrid, ranking loss on the retriever's top 300, reranks the top 20",
                {"llm-input": "hybrid", "objective": "ranking", "train-negatives-pool": 300, "rerank-top": 20},
                item_tables_from=_RETRIEVER,
            ),
            # Content beside the collaborative signal: prompts name items by title and genres.
            Point(
                "LLM hybrid, titles and genres, ranking loss, reranks the top 20",
                {"llm-input": "hybrid", "objective": "ranking", "item-text": "title-genres", "rerank-top": 20},
                item_tables_from=_RETRIEVER,
            ),
        ),
        description="demo preset, DP federated MF retrieving and six LLMs reranking (CPU-sized)",
    ),
    # For tests: the tiny random model, two methods, each privacy guarantee on one of them.
    "smoke": Suite(
        preset="smoke",
        base={"num-server-rounds": 1, "ranking-users": 4, "mf-dim": 8},
        points=(
            Point(_RETRIEVER, {"recommender": "mf", "strategy": "fedavg"}),
            Point(
                "FedAvg-LoRA hybrid, epsilon 50, reranks the top 10",
                {"strategy": "fedavg", "llm-input": "hybrid", "rerank-top": 10},
                item_tables_from=_RETRIEVER,
            ),
            Point(
                "FFA-LoRA, no record-level DP, client-level DP",
                {"strategy": "ffa-lora", "dp": False, "client-dp": True},
            ),
        ),
        description="tiny random model (tests)",
    ),
}
