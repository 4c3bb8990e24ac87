import math

import numpy as np
import pytest

from fedrec.tasks.metrics import (
    auc_from_histograms,
    auc_standard_error,
    mean_and_standard_error,
    roc_auc,
    score_histograms,
    user_auc,
)
from fedrec.tasks.ranking.ranker import ranking_metrics


def test_auc_hand_computed():
    # pairs (pos, neg): (0.9>0.1) (0.9>0.4) (0.35<0.4) (0.35>0.1) -> 3/4
    assert roc_auc([1, 0, 1, 0], [0.9, 0.1, 0.35, 0.4]) == 0.75
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5  # ties count half
    assert roc_auc([0, 1, 1], [3.0, 1.0, 2.0]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_histogram_auc_matches_exact_auc():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    pos, neg = score_histograms(labels, scores)
    assert sum(pos) == labels.sum() and sum(neg) == (1 - labels).sum()
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc(labels, scores), abs=2e-3)


def test_auc_standard_error_matches_the_spread_of_repeated_samples():
    rng = np.random.default_rng(3)
    aucs = []
    for _ in range(400):
        labels = np.r_[np.ones(40), np.zeros(60)]
        scores = np.r_[rng.normal(1.2, 1.0, 40), rng.normal(0.0, 1.0, 60)]  # AUC about 0.80
        aucs.append(roc_auc(labels, scores))
    expected = auc_standard_error(float(np.mean(aucs)), 40, 60)
    assert float(np.std(aucs)) == pytest.approx(expected, rel=0.15)
    assert auc_standard_error(1.0, 40, 60) == 0.0 and math.isnan(auc_standard_error(math.nan, 40, 60))
    assert auc_standard_error(0.8, 400, 600) < auc_standard_error(0.8, 40, 60) / 3  # about 1/sqrt(n)


def test_user_auc_averages_each_users_auc_and_ignores_per_user_offsets():
    users = ["a", "a", "b", "b", "c"]
    labels = [1, 0, 1, 0, 1]
    uauc, se, count = user_auc(users, labels, [0.9, 0.1, 0.2, 0.3, 0.5])  # a: 1.0, b: 0.0, c: one class
    assert (uauc, count) == (0.5, 2) and se == pytest.approx(np.std([1.0, 0.0], ddof=1) / math.sqrt(2))
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50).astype(str), 6)
    labels = rng.integers(0, 2, 300)
    item_signal = labels + rng.normal(0, 1.0, 300)
    offsets = np.repeat(rng.normal(0, 5.0, 50), 6)  # a per-user offset, as the LLM learned
    assert user_auc(users, labels, item_signal + offsets)[0] == pytest.approx(user_auc(users, labels, item_signal)[0])
    assert roc_auc(labels, item_signal + offsets) < roc_auc(labels, item_signal) - 0.1  # the pooled AUC mixes users


def test_standard_errors_of_means_and_ranking_metrics():
    mean, se = mean_and_standard_error([1.0, 0.0, 1.0, 1.0])
    assert mean == 0.75 and se == pytest.approx(0.5 / 2)
    assert math.isnan(mean_and_standard_error([0.3])[1]) and math.isnan(mean_and_standard_error([])[0])
    metrics = ranking_metrics([0, 3, 12, 30])
    assert metrics["hr@10"] == 0.5 and metrics["hr@10_se"] == pytest.approx(np.std([1, 1, 0, 0], ddof=1) / 2)
    gains = [1.0, 1 / math.log2(5), 0.0, 0.0]
    assert metrics["ndcg@10_se"] == pytest.approx(np.std(gains, ddof=1) / 2)
