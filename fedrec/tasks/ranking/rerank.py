"""Retrieve, then rerank: a collaborative run's retriever (mf item tables with users
folded in, or ease weights) orders a user's candidates, and the LLM reorders the first
``top`` of them.

Both orders count ties against the target, as :func:`~..metrics.target_rank` does, so
that ``top`` = every candidate gives the LLM's own rank and ``top`` = 0 the
retriever's. A late-fusion weight orders the head by the LLM's score plus that weight
times the retriever's, each standardized over the head (0: the LLM's order alone). The
central evaluation reports the reranked list's HR@10/NDCG@10 among the sampled
candidates and Recall@20/coverage@10 over the whole catalog, and the same for the
retriever alone, on the same cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...models.prefix_store import PrefixStore
from ...models.scorer import Scorer
from ..collaborative.retriever import Retriever
from ..metrics import catalog_coverage, hit_rate_at_k
from ..preference.examples import PreferenceExample
from .cases import RankingCase
from .ranker import K, ranking_metrics

RETRIEVER = "retriever_"  # prefix of the retriever's own metrics


def fused_scores(llm: np.ndarray, retriever: np.ndarray, weight: float) -> np.ndarray:
    """Late fusion of a reranked head's scores: the LLM's plus ``weight`` times the
    retriever's, each standardized over the head; with ``weight`` 0 the LLM's own.
    """
    llm = np.asarray(llm, dtype=float)
    if not weight:
        return llm
    return _standardized(llm) + weight * _standardized(np.asarray(retriever, dtype=float))


def _standardized(scores: np.ndarray) -> np.ndarray:
    spread = scores.std()
    return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)


def rerank_order(
    retriever: np.ndarray,
    target: int,
    top: int,
    llm: Callable[[np.ndarray], np.ndarray] | None = None,
    fusion_weight: float = 0.0,
) -> np.ndarray:
    """Candidate indices best first: the retriever's order, its first ``top`` reordered
    by ``llm`` (their scores, given their indices; needed when ``top`` > 0), fused with
    the retriever's at ``fusion_weight``; ties rank the target last.
    """
    is_target = np.zeros(len(retriever), dtype=bool)
    is_target[target] = True
    order = np.lexsort((is_target, -retriever))
    head = order[:top]
    if len(head):
        if llm is None:
            raise ValueError(f"reranking the top {top} needs the LLM's scores")
        scores = fused_scores(llm(head), retriever[head], fusion_weight)
        head = head[np.lexsort((is_target[head], -scores))]
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


@dataclass(frozen=True)
class _ScoredCase:
    """One case scored once: the retriever's score of every catalog row, the sampled
    candidates' rows (target first), the rows of the user's unrated catalog and the
    target's index there, and the LLM's score of each row of both lists' heads.
    """

    retriever: np.ndarray
    sampled: np.ndarray
    catalog: np.ndarray
    target: int
    llm: dict[int, float]

    def add_orders(self, lists: _Lists, top: int, fusion_weight: float) -> None:
        """Add both lists' orders, their first ``top`` reranked at ``fusion_weight``."""
        orders = []
        for rows, target in ((self.sampled, 0), (self.catalog, self.target)):
            llm = self._llm_of(rows)
            orders.append(rerank_order(self.retriever[rows], target, top, llm, fusion_weight))
        lists.add(orders[0], orders[1], self.target, self.catalog)

    def _llm_of(self, rows: np.ndarray) -> Callable[[np.ndarray], list[float]]:
        return lambda head: [self.llm[int(rows[i])] for i in head]


class RerankEvaluation:
    """The retriever's and the reranked lists' metrics on ranking cases (see the module docstring)."""

    def __init__(
        self,
        scorer: Scorer,
        cases: list[RankingCase],
        prompts: Callable[[list[PreferenceExample]], list[str]],
        batch_size: int,
        retriever: Retriever,
        top: int,
        rated: dict[str, set[str]],
        signals: Any = None,
        fusion_weight: float = 0.0,
        store: PrefixStore | None = None,
    ) -> None:
        self.scorer, self.cases, self.prompts, self.batch_size = scorer, cases, prompts, batch_size
        self.retriever, self.top, self.rated, self.signals = retriever, top, rated, signals
        self.fusion_weight, self.store = fusion_weight, store

    def metrics(self) -> dict[str, Any]:
        """Metrics of the reranked lists, and the retriever's prefixed with ``retriever_``."""
        return self.metrics_by_weight((self.fusion_weight,))[self.fusion_weight]

    def metrics_by_weight(self, fusion_weights: Sequence[float]) -> dict[float, dict[str, Any]]:
        """:meth:`metrics` at each late-fusion weight, the LLM scoring every case once."""
        scored = [self._scored(case) for case in self.cases]
        size = len(self.retriever.items)
        plain = _Lists()
        for case in scored:
            case.add_orders(plain, 0, 0.0)
        retriever = {RETRIEVER + k: v for k, v in plain.metrics(size).items()}
        results = {}
        for weight in fusion_weights:
            reranked = _Lists()
            for case in scored:
                case.add_orders(reranked, self.top, weight)
            results[weight] = reranked.metrics(size) | retriever
        return results

    def _scored(self, case: RankingCase) -> _ScoredCase:
        """The case's retriever scores and its heads' LLM scores."""
        row = self.retriever.item_row
        scores = self.retriever.catalog_scores(case.user)
        sampled = np.array([row[item] for item in case.candidates])
        allowed = np.ones(len(scores), dtype=bool)
        allowed[[row[i] for i in self.rated.get(case.user, set()) if i in row]] = False
        allowed[sampled[0]] = True
        catalog = np.flatnonzero(allowed)
        target = int(np.flatnonzero(catalog == sampled[0])[0])
        heads = set(sampled[rerank_order(scores[sampled], 0, 0)[: self.top]])
        heads |= set(catalog[rerank_order(scores[catalog], target, 0)[: self.top]])
        llm = self._llm_scores(case, sorted(int(r) for r in heads), int(sampled[0]))
        return _ScoredCase(scores, sampled, catalog, target, llm)

    def _llm_scores(self, case: RankingCase, rows: list[int], target_row: int) -> dict[int, float]:
        """The LLM's score of each item row (both lists' heads, scored in one pass)."""
        items = self.retriever.items
        examples = [PreferenceExample(case.user, items[r], int(r == target_row), case.history) for r in rows]
        signals = None if self.signals is None else self.signals.of(examples)
        with self.scorer.in_float32():
            tokens = self.scorer.encode(self.prompts(examples))
            llm = self.scorer.score_candidates(tokens, self.batch_size, signals, self.store)
        return dict(zip(rows, llm.tolist(), strict=True))
