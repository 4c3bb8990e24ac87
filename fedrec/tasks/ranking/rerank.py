"""Retrieve, then rerank: a collaborative run's item tables (users folded in) order a
user's candidates, and the LLM reorders the first ``top`` of them.

Both orders count ties against the target, as :func:`~..metrics.target_rank` does, so
that ``top`` = every candidate gives the LLM's own rank and ``top`` = 0 the
retriever's. The central evaluation reports the reranked list's HR@10/NDCG@10 among
the sampled candidates and Recall@20/coverage@10 over the whole catalog, and the same
for the retriever alone, on the same cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...models.scorer import Scorer
from ..collaborative.folded import FoldedInTables
from ..metrics import catalog_coverage, hit_rate_at_k
from ..preference.examples import PreferenceExample
from .cases import RankingCase
from .ranker import K, ranking_metrics

RETRIEVER = "retriever_"  # prefix of the retriever's own metrics


def rerank_order(
    retriever: np.ndarray, target: int, top: int, llm: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Candidate indices best first: the retriever's order, its first ``top`` reordered
    by ``llm`` (their scores, given their indices; needed when ``top`` > 0); ties rank
    the target last.
    """
    is_target = np.zeros(len(retriever), dtype=bool)
    is_target[target] = True
    order = np.lexsort((is_target, -retriever))
    head = order[:top]
    if len(head):
        if llm is None:
            raise ValueError(f"reranking the top {top} needs the LLM's scores")
        head = head[np.lexsort((is_target[head], -np.asarray(llm(head), dtype=float)))]
    return np.concatenate([head, order[top:]])


@dataclass
class _Lists:
    """Per case: the target's rank among the sampled candidates and in the catalog, and
    the catalog's top 10 (item rows).
    """

    ranks: list[int] = field(default_factory=list)
    catalog_ranks: list[int] = field(default_factory=list)
    tops: list[list[int]] = field(default_factory=list)

    def add(self, in_sampled: np.ndarray, in_catalog: np.ndarray, target: int, catalog: np.ndarray) -> None:
        """One case's orders (indices into its sampled candidates, target 0, and into ``catalog``)."""
        self.ranks.append(int(np.flatnonzero(in_sampled == 0)[0]))
        self.catalog_ranks.append(int(np.flatnonzero(in_catalog == target)[0]))
        self.tops.append(catalog[in_catalog[:K]].tolist())

    def metrics(self, catalog_size: int) -> dict[str, Any]:
        """HR@10/NDCG@10 (with ranks and standard errors), Recall@20 and coverage@10."""
        return ranking_metrics(self.ranks) | {
            "recall@20": hit_rate_at_k(self.catalog_ranks, 20),
            "coverage@10": catalog_coverage(self.tops, catalog_size),
        }


class RerankEvaluation:
    """The retriever's and the reranked lists' metrics on ranking cases (see the module docstring)."""

    def __init__(
        self,
        scorer: Scorer,
        cases: list[RankingCase],
        prompts: Callable[[list[PreferenceExample]], list[str]],
        batch_size: int,
        retriever: FoldedInTables,
        top: int,
        rated: dict[str, set[str]],
        signals: Any = None,
    ) -> None:
        self.scorer, self.cases, self.prompts, self.batch_size = scorer, cases, prompts, batch_size
        self.retriever, self.top, self.rated, self.signals = retriever, top, rated, signals

    def metrics(self) -> dict[str, Any]:
        """Metrics of the reranked lists, and the retriever's prefixed with ``retriever_``."""
        reranked, plain = _Lists(), _Lists()
        for case in self.cases:
            self._case(case, reranked, plain)
        size = len(self.retriever.items)
        return reranked.metrics(size) | {RETRIEVER + k: v for k, v in plain.metrics(size).items()}

    def _case(self, case: RankingCase, reranked: _Lists, plain: _Lists) -> None:
        """Add one case's reranked and retriever-only orders."""
        row = self.retriever.item_row
        scores = self.retriever.catalog_scores(case.user)
        sampled = np.array([row[item] for item in case.candidates])
        allowed = np.ones(len(scores), dtype=bool)
        allowed[[row[i] for i in self.rated.get(case.user, set()) if i in row]] = False
        allowed[sampled[0]] = True
        catalog = np.flatnonzero(allowed)
        target = int(np.flatnonzero(catalog == sampled[0])[0])
        retrieved = {
            "sampled": rerank_order(scores[sampled], 0, 0),
            "catalog": rerank_order(scores[catalog], target, 0),
        }
        plain.add(retrieved["sampled"], retrieved["catalog"], target, catalog)
        heads = set(sampled[retrieved["sampled"][: self.top]]) | set(catalog[retrieved["catalog"][: self.top]])
        llm = self._llm_scores(case, sorted(int(r) for r in heads), int(sampled[0]))
        in_sampled = rerank_order(scores[sampled], 0, self.top, lambda head: [llm[sampled[i]] for i in head])
        in_catalog = rerank_order(scores[catalog], target, self.top, lambda head: [llm[catalog[i]] for i in head])
        reranked.add(in_sampled, in_catalog, target, catalog)

    def _llm_scores(self, case: RankingCase, rows: list[int], target_row: int) -> dict[int, float]:
        """The LLM's score of each item row (both lists' heads, scored in one pass)."""
        items = self.retriever.items
        examples = [PreferenceExample(case.user, items[r], int(r == target_row), case.history) for r in rows]
        signals = None if self.signals is None else self.signals.of(examples)
        with self.scorer.in_float32():
            llm = self.scorer.score_candidates(self.scorer.encode(self.prompts(examples)), self.batch_size, signals)
        return dict(zip(rows, llm.tolist(), strict=True))
