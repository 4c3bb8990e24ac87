"""Like rates: the smoothing strength of a rate towards the overall rate, and the logit
the priors add. Light, so the device's retrieval can use them.
"""

from __future__ import annotations

import numpy as np

PRIOR_STRENGTH = 5.0  # pseudo-ratings at the overall like rate that a rate is smoothed with


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))``."""
    return np.log(p) - np.log1p(-p)
