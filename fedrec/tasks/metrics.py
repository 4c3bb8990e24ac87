"""Accuracy metrics: AUC of the preference task; HR, NDCG, recall and coverage of ranking."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

# Score histograms for federated AUC: bins over sigmoid(score) in [0, 1].
HISTOGRAM_BINS = 1000


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN when only one
    class is present.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score_histograms(labels: np.ndarray, scores: np.ndarray) -> tuple[list[int], list[int]]:
    """Counts of positive and negative examples per bin of sigmoid(score): what a
    client shares for federated AUC instead of its per-example scores.
    """
    probs = 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=float)))
    bins = np.minimum((probs * HISTOGRAM_BINS).astype(int), HISTOGRAM_BINS - 1)
    y = np.asarray(labels, dtype=bool)
    pos = np.bincount(bins[y], minlength=HISTOGRAM_BINS)
    neg = np.bincount(bins[~y], minlength=HISTOGRAM_BINS)
    return pos.tolist(), neg.tolist()


def auc_from_histograms(pos: Sequence[float], neg: Sequence[float]) -> float:
    """AUC of binned scores (pairs in the same bin count half); NaN for one class."""
    p, n = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    n_pos, n_neg = p.sum(), n.sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    below = np.cumsum(n) - n  # negatives in strictly lower bins
    return float((p * (below + 0.5 * n)).sum() / (n_pos * n_neg))


def target_rank(scores: Sequence[float] | np.ndarray, target: int = 0) -> int:
    """0-based rank of ``scores[target]`` among all scores, ties counted against the
    target (pessimistic: a constant scorer never looks good).
    """
    scores = np.asarray(scores, dtype=float)
    if not np.isfinite(scores).all():
        raise ValueError("ranking scores must be finite")
    return int(np.sum(scores >= scores[target])) - 1


def hit_rate_at_k(ranks: Sequence[int], k: int) -> float:
    """Share of users whose target ranks in the top ``k`` (HR@K)."""
    return float(np.mean(np.asarray(ranks) < k)) if len(ranks) else math.nan


def ndcg_at_k(ranks: Sequence[int], k: int) -> float:
    """Mean NDCG@K with one relevant item: ``1 / log2(rank + 2)`` if it ranks in the top ``k``."""
    ranks = np.asarray(ranks, dtype=float)
    if not len(ranks):
        return math.nan
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))


def catalog_coverage(top_lists: Sequence[Sequence[str]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one user's top list."""
    if catalog_size <= 0:
        raise ValueError("catalog size must be positive")
    return len({item for top in top_lists for item in top}) / catalog_size
