import math

import numpy as np
import pytest

from fedrec.tasks.metrics import auc_from_histograms, roc_auc, score_histograms


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
