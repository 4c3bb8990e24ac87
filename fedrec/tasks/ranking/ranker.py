"""Ranking with the LLM: each case's candidates scored as preference questions with one
pass over their shared history prefix (:meth:`~fedrec.models.scorer.Scorer.score_candidates`);
HR@10 and NDCG@10 over the cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ...models.prefix_store import PrefixStore
from ...models.scorer import Scorer
from ..metrics import hit_rate_at_k, mean_and_standard_error, ndcg_at_k, target_rank
from .cases import RankingCase

K = 10


def ranking_metrics(ranks: Sequence[int], k: int = K) -> dict[str, float | list[int]]:
    """HR@k and NDCG@k of the targets' ranks, with their standard errors over the users,
    and the ranks themselves (for paired comparisons on the same cases).
    """
    hits = [hit_rate_at_k([r], k) for r in ranks]
    gains = [ndcg_at_k([r], k) for r in ranks]
    return {
        "ranks": [int(r) for r in ranks],
        f"hr@{k}": hit_rate_at_k(ranks, k),
        f"hr@{k}_se": mean_and_standard_error(hits)[1],
        f"ndcg@{k}": ndcg_at_k(ranks, k),
        f"ndcg@{k}_se": mean_and_standard_error(gains)[1],
        "ranking_users": len(ranks),
    }


def paired_differences(ranks: Sequence[int], other: Sequence[int], k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of ``ranks`` minus those of ``other`` on the same cases: the mean
    of the per-user differences and its standard error (paired, so the users' shared
    difficulty cancels).
    """
    if len(ranks) != len(other):
        raise ValueError(f"paired differences need the same cases: {len(ranks)} and {len(other)} ranks")
    result = {}
    for name, metric in (("hr", hit_rate_at_k), ("ndcg", ndcg_at_k)):
        diffs = [metric([a], k) - metric([b], k) for a, b in zip(ranks, other, strict=True)]
        result[f"{name}@{k}_diff"], result[f"{name}@{k}_diff_se"] = mean_and_standard_error(diffs)
    return result


class Ranker(Protocol):
    """Ranks a central evaluation's cases with the scorer's current adapter."""

    def metrics(self) -> dict[str, Any]:
        """Ranking metrics of the cases, with the target's rank in each (``ranks``)."""
        ...


class LLMRanker:
    """Ranks each case's candidates with the scorer's current adapter (and soft tokens
    from ``signals``, an object whose ``of(examples)`` gives each example's signals),
    the frozen states kept in ``store`` when given.
    """

    def __init__(
        self,
        scorer: Scorer,
        cases: list[RankingCase],
        prompts: Callable,
        batch_size: int,
        signals: Any = None,
        store: PrefixStore | None = None,
    ) -> None:
        self.scorer, self.batch_size, self.store = scorer, batch_size, store
        self.tokens = [scorer.encode(prompts(case.examples())) for case in cases]
        self.signals = [None if signals is None else signals.of(case.examples()) for case in cases]

    def metrics(self) -> dict[str, float | list[int]]:
        """HR@10 and NDCG@10 of :meth:`ranks`."""
        return ranking_metrics(self.ranks())

    def ranks(self) -> list[int]:
        """The target's rank in every case, scored in float32 (a bfloat16 forward would
        quantize close candidates into ties, which count against the target).
        """
        with self.scorer.in_float32():
            return [
                target_rank(self.scorer.score_candidates(t, self.batch_size, s, self.store).numpy())
                for t, s in zip(self.tokens, self.signals, strict=True)
            ]
