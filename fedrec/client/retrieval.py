"""Retrieval on the device: a collaborative run's item tables score the whole catalog
for one user, whose embedding is folded in from their own history here (it never
leaves this machine). Milliseconds for MovieLens' 1,682 items; the LLM can then rerank
the top of the list (:func:`fedrec.client.recommend.recommend`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import FedRecConfig
from ..data.interactions import InteractionData
from ..privacy.item_statistics import STATISTICS_FILE
from ..protocol.records import ITEM_LIKES, ITEM_RATINGS
from ..tasks.collaborative.folded import FoldedInTables
from ..tasks.collaborative.priors import ItemCounts


def retrieve(path: Path, history: pd.DataFrame, data: InteractionData, cfg: FedRecConfig) -> list[tuple[str, float]]:
    """Every catalog item the history does not hold, with its score, best first: the
    user folded in from the history's likes, plus the run's weighted federated
    popularity when it used one.
    """
    user = history.assign(user="user")
    folded = FoldedInTables.from_file(path, data.items["item"], user, cfg.data.like_threshold, ["user"])
    items, scores = folded.items, folded.catalog_scores("user")
    weight = cfg.collaborative.mf_popularity_weight
    statistics = path.parent / STATISTICS_FILE
    if weight > 0 and statistics.exists():
        with np.load(statistics) as stored:
            scores = scores + weight * ItemCounts(stored[ITEM_RATINGS], stored[ITEM_LIKES]).popularity()
    rated = set(history["item"].astype(str))
    order = np.argsort(-scores, kind="stable")
    return [(items[i], float(scores[i])) for i in order if items[i] not in rated]
