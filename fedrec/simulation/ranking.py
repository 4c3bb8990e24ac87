"""Ranking evaluation (design §4): the LLM scorer and classic baselines rank each
case's candidates; HR@10 and NDCG@10 over the cases.

The LLM scores a user's 100 candidate prompts with one pass over their shared history
prefix (:meth:`PreferenceScorer.score_candidates`). The baselines see only training
interactions: ``most-popular`` (number of training ratings) and ``bpr-mf`` (centralized
matrix factorization with the BPR loss on training likes; Rendle et al., 2009).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.ranking import RankingCase
from ..metrics import hit_rate_at_k, ndcg_at_k, target_rank
from ..models.scorer import PreferenceScorer

K = 10


def ranking_metrics(ranks: Sequence[int], k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of the targets' ranks."""
    return {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k), "ranking_users": len(ranks)}


class LLMRanker:
    """Ranks each case's candidates with the scorer's current adapter."""

    def __init__(self, scorer: PreferenceScorer, cases: list[RankingCase], prompts: Callable, batch_size: int) -> None:
        self.scorer, self.batch_size = scorer, batch_size
        self.tokens = [scorer.encode(prompts(case.examples())) for case in cases]

    def ranks(self) -> list[int]:
        """The target's rank in every case."""
        return [target_rank(self.scorer.score_candidates(t, self.batch_size).numpy()) for t in self.tokens]


def popularity_ranks(train: pd.DataFrame, cases: list[RankingCase]) -> list[int]:
    """Ranks by the number of training ratings of each candidate."""
    counts = train["item"].value_counts().to_dict()
    return [target_rank([counts.get(item, 0) for item in case.candidates]) for case in cases]


def bpr_mf_ranks(
    train: pd.DataFrame,
    cases: list[RankingCase],
    like_threshold: float,
    dim: int = 32,
    epochs: int = 30,
    learning_rate: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[int]:
    """Ranks by a BPR matrix factorization trained on the training likes."""
    users = sorted(set(train["user"]) | {c.user for c in cases})
    items = sorted(set(train["item"]) | {i for c in cases for i in c.candidates})
    user_index = {u: n for n, u in enumerate(users)}
    item_index = {i: n for n, i in enumerate(items)}
    likes = train[train["rating"] > like_threshold]
    pos_u = torch.tensor([user_index[u] for u in likes["user"]])
    pos_i = torch.tensor([item_index[i] for i in likes["item"]])
    generator = torch.Generator().manual_seed(seed)
    user_emb = torch.nn.Parameter(torch.randn(len(users), dim, generator=generator) * 0.1)
    item_emb = torch.nn.Parameter(torch.randn(len(items), dim, generator=generator) * 0.1)
    item_bias = torch.nn.Parameter(torch.zeros(len(items)))
    optimizer = torch.optim.Adam([user_emb, item_emb, item_bias], lr=learning_rate, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(pos_u), generator=generator)
        for start in range(0, len(order), 1024):
            batch = order[start : start + 1024]
            u, i = pos_u[batch], pos_i[batch]
            j = torch.randint(len(items), (len(batch),), generator=generator)
            diff = (user_emb[u] * (item_emb[i] - item_emb[j])).sum(-1) + item_bias[i] - item_bias[j]
            loss = -torch.nn.functional.logsigmoid(diff).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        ranks = []
        for case in cases:
            cand = torch.tensor([item_index[i] for i in case.candidates])
            scores = item_emb[cand] @ user_emb[user_index[case.user]] + item_bias[cand]
            ranks.append(target_rank(scores.numpy()))
    return ranks


def ranking_baselines(train: pd.DataFrame, cases: list[RankingCase], like_threshold: float, seed: int) -> dict:
    """HR@10 / NDCG@10 of each baseline on the cases."""
    return {
        "most-popular": ranking_metrics(popularity_ranks(train, cases)),
        "bpr-mf": ranking_metrics(bpr_mf_ranks(train, cases, like_threshold, seed=seed)),
    }


def random_expectation(num_candidates: int, k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of a uniformly random ranking."""
    ranks = np.arange(num_candidates)
    return {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k)}
