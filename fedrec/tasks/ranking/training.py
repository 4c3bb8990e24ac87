"""Training the LLM to rank (``objective = 'ranking'``): each liked training example is
asked beside ``train-negatives`` items its user never rated in training, after the same
history, and a softmax cross-entropy over the group's scores puts the liked one first.
The negatives are drawn uniformly from the unrated catalog, or (``train-negatives-pool =
K``) from the K unrated items a retriever scores highest for the user: the hard
negatives a reranker of that retriever's top N must tell apart (LlamaRec trains on its
retriever's candidates for the same reason).
A per-user offset (the like-rate the preference loss rewards) cancels within a group:
only what tells items apart lowers the loss.

Under DP-SGD a group is one record, so one liked interaction, with its history and
negatives, moves the update by at most the clip. On a causal LM the group runs packed
into one row, the history once (:mod:`fedrec.models.packing`), and Opacus's per-sample
gradient is the group's; otherwise its rows' per-sample gradients are summed before
clipping (:func:`fedrec.privacy.record_level.group_grad_samples`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..collaborative.retriever import Retriever
from ..preference.examples import PreferenceExample


def _seed(seed: int, user: str, item: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{user}/{item}".encode()).digest()[:8], "little")


def _retrieved(pool: np.ndarray, retriever: Retriever, user: str, top: int) -> np.ndarray:
    """The ``top`` items of ``pool`` with the retriever's highest scores for ``user`` (ties by id)."""
    scores = retriever.catalog_scores(user)[[retriever.item_row[item] for item in pool]]
    return pool[np.sort(np.argsort(-scores, kind="stable")[:top])]


def ranking_groups(
    examples: list[PreferenceExample],
    train_interactions: pd.DataFrame,
    catalog: list[str],
    negatives: int,
    seed: int,
    retriever: Retriever | None = None,
    pool: int = 0,
) -> list[list[PreferenceExample]]:
    """Each liked example followed by ``negatives`` items (label 0) its user did not rate
    in ``train_interactions``, drawn without replacement with a generator seeded by (seed,
    user, item) from all of them, or, with a ``retriever`` and ``pool > 0``, from the
    ``pool`` the retriever ranks highest for the user; a user with fewer unrated items
    than ``negatives`` gets no groups.
    """
    items = np.array(sorted(catalog))
    rated = train_interactions.groupby("user")["item"].agg(set).to_dict()
    unrated: dict[str, np.ndarray] = {}
    groups = []
    for example in examples:
        if not example.label:
            continue
        if example.user not in unrated:
            candidates = items[~np.isin(items, list(rated.get(example.user, set())))]
            if retriever is not None and pool:
                candidates = _retrieved(candidates, retriever, example.user, pool)
            unrated[example.user] = candidates
        candidates = unrated[example.user]
        if len(candidates) < negatives:
            continue
        picks = np.random.default_rng(_seed(seed, example.user, example.item)).choice(
            candidates, negatives, replace=False
        )
        others = [PreferenceExample(example.user, str(item), 0, example.history) for item in picks]
        groups.append([example, *others])
    return groups


def ranking_loss(scores: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of groups ``[B, G]`` whose first member is the liked item."""
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
