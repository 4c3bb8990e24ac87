"""Retrieval on the device: a collaborative run's item tables score the whole catalog
for one user, whose embedding is folded in from their own history here (it never
leaves this machine). Milliseconds for MovieLens' 1,682 items; the LLM can then rerank
the top of the list (:func:`fedrec.client.recommend.recommend`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import FedRecConfig
from ..data.interactions import InteractionData
from ..models.collaborative import ITEM_EMBEDDINGS, MatrixFactorization, read_item_tables
from ..privacy.item_statistics import STATISTICS_FILE, popularity
from ..protocol.records import ITEM_RATINGS
from ..tasks.collaborative.training import Likes, catalog_order, fold_in


def retrieve(path: Path, history: pd.DataFrame, data: InteractionData, cfg: FedRecConfig) -> list[tuple[str, float]]:
    """Every catalog item the history does not hold, with its score, best first: the
    user folded in from the history's likes, plus the run's weighted federated
    popularity when it used one.
    """
    arrays = read_item_tables(path)
    items = catalog_order(data.items["item"])
    dim = arrays[ITEM_EMBEDDINGS].shape[-1] if ITEM_EMBEDDINGS in arrays else 0
    model = MatrixFactorization(1, len(items), dim)
    model.load_item_arrays(arrays, str(path))
    user = history.assign(user="user")
    fold_in(model, Likes.of(user, cfg.data.like_threshold, ["user"], items))
    with torch.no_grad():
        scores = model(torch.zeros(1, dtype=torch.long), torch.arange(len(items))[None])[0].numpy().astype(float)
    weight = cfg.collaborative.mf_popularity_weight
    statistics = path.parent / STATISTICS_FILE
    if weight > 0 and statistics.exists():
        with np.load(statistics) as stored:
            scores = scores + weight * popularity(stored[ITEM_RATINGS])
    rated = set(history["item"].astype(str))
    order = np.argsort(-scores, kind="stable")
    return [(items[i], float(scores[i])) for i in order if items[i] not in rated]
