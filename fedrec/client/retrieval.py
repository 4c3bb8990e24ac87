"""Retrieval on the device: a collaborative run's file (mf item tables or ease weights)
scores the whole catalog for one user from their own history, here (an mf user's
embedding is folded in on this machine and never leaves it). Milliseconds for
MovieLens' 1,682 items; the LLM can then rerank the top of the list
(:func:`fedrec.client.recommend.recommend`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import FedRecConfig
from ..data.interactions import InteractionData
from ..protocol.records import ITEM_LIKES, ITEM_RATINGS
from ..tasks.collaborative.priors import STATISTICS_FILE, ItemCounts
from ..tasks.collaborative.retriever import load_retriever


def retrieve(path: Path, history: pd.DataFrame, data: InteractionData, cfg: FedRecConfig) -> list[tuple[str, float]]:
    """Every catalog item the history does not hold, with its score, best first: from
    the history's likes, plus the run's weighted federated popularity when it used one.
    """
    user = history.assign(user="user")
    retriever = load_retriever(path, data.items["item"], user, cfg.data.like_threshold, ["user"])
    items, scores = retriever.items, retriever.catalog_scores("user")
    weight = cfg.collaborative.mf_popularity_weight
    statistics = path.parent / STATISTICS_FILE
    if weight > 0 and statistics.exists():
        with np.load(statistics) as stored:
            scores = scores + weight * ItemCounts(stored[ITEM_RATINGS], stored[ITEM_LIKES]).popularity()
    rated = set(history["item"].astype(str))
    order = np.argsort(-scores, kind="stable")
    return [(items[i], float(scores[i])) for i in order if items[i] not in rated]
