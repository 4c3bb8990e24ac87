"""Accuracy metrics, with their standard errors: AUC and per-user AUC (UAUC) of the
preference task; HR, NDCG, recall and coverage of ranking.
"""

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


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC over ``n_pos`` positives and ``n_neg`` negatives (Hanley
    and McNeil, 1982); NaN when the AUC is.
    """
    if math.isnan(auc) or n_pos == 0 or n_neg == 0:
        return math.nan
    q1, q2 = auc / (2.0 - auc), 2.0 * auc**2 / (1.0 + auc)
    variance = auc * (1.0 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)
    return math.sqrt(max(variance, 0.0) / (n_pos * n_neg))


def mean_and_standard_error(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample std / sqrt(n)); NaN when empty,
    standard error NaN for one value.
    """
    x = np.asarray(values, dtype=float)
    if not len(x):
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def user_auc(
    users: Sequence[str], labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[float, float, int]:
    """UAUC (as CoLLM reports it): the mean over users of each user's own AUC, over the
    users whose examples hold both classes, with its standard error and that number of
    users. Unlike the pooled AUC it compares items within a user, so a per-user offset in
    the scores does not count.
    """
    y, s, u = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float), np.asarray(users)
    per_user = [roc_auc(y[u == user], s[u == user]) for user in np.unique(u)]
    defined = [auc for auc in per_user if not math.isnan(auc)]
    mean, se = mean_and_standard_error(defined)
    return mean, se, len(defined)


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
