"""Accuracy metrics of the preference task."""

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
