"""Ranking with the LLM: each case's candidates scored as preference questions with one
pass over their shared history prefix (:meth:`~fedrec.models.scorer.Scorer.score_candidates`);
HR@10 and NDCG@10 over the cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...models.scorer import Scorer
from ..metrics import hit_rate_at_k, ndcg_at_k, target_rank
from .cases import RankingCase

K = 10


def ranking_metrics(ranks: Sequence[int], k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of the targets' ranks."""
    return {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k), "ranking_users": len(ranks)}


class LLMRanker:
    """Ranks each case's candidates with the scorer's current adapter."""

    def __init__(self, scorer: Scorer, cases: list[RankingCase], prompts: Callable, batch_size: int) -> None:
        self.scorer, self.batch_size = scorer, batch_size
        self.tokens = [scorer.encode(prompts(case.examples())) for case in cases]

    def ranks(self) -> list[int]:
        """The target's rank in every case."""
        return [target_rank(self.scorer.score_candidates(t, self.batch_size).numpy()) for t in self.tokens]
