"""Ranking baselines on the same cases as the LLM. They see only training interactions:
``most-popular`` (number of training ratings), ``bpr-mf`` (centralized matrix
factorization with the BPR loss on training likes; Rendle et al., 2009) and
``federated-mf`` (the same model, user embeddings kept on the clients, item embeddings
averaged by FedAvg; no privacy mechanism).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from ..metrics import catalog_coverage, hit_rate_at_k, ndcg_at_k, target_rank
from ..threads import one_thread
from .cases import RankingCase
from .ranker import K, ranking_metrics


def popularity_ranks(train: pd.DataFrame, cases: list[RankingCase]) -> list[int]:
    """Ranks by the number of training ratings of each candidate."""
    counts = train["item"].value_counts().to_dict()
    return [target_rank([counts.get(item, 0) for item in case.candidates]) for case in cases]


class BPRModel:
    """Matrix factorization ``u . i + b_i`` trained with the BPR loss on likes."""

    def __init__(self, users: list[str], items: list[str], dim: int, seed: int) -> None:
        self.user_index = {u: n for n, u in enumerate(users)}
        self.item_index = {i: n for n, i in enumerate(items)}
        self.generator = torch.Generator().manual_seed(seed)
        self.user_emb = torch.nn.Parameter(torch.randn(len(users), dim, generator=self.generator) * 0.1)
        self.item_emb = torch.nn.Parameter(torch.randn(len(items), dim, generator=self.generator) * 0.1)
        self.item_bias = torch.nn.Parameter(torch.zeros(len(items)))

    def fit(self, likes: pd.DataFrame, epochs: int, learning_rate: float, l2: float = 1e-4) -> None:
        """``epochs`` passes of BPR (one uniformly sampled negative per like), with L2
        on the rows of each batch only, so rows outside ``likes`` stay exactly as they are.
        Runs on one thread: the gradients of repeated embedding rows are summed in an order
        that depends on the threads, and runs must be repeatable.
        """
        with one_thread():
            self._fit(likes, epochs, learning_rate, l2)

    def _fit(self, likes: pd.DataFrame, epochs: int, learning_rate: float, l2: float) -> None:
        pos_u = torch.tensor([self.user_index[u] for u in likes["user"]], dtype=torch.long)
        pos_i = torch.tensor([self.item_index[i] for i in likes["item"]], dtype=torch.long)
        params = [self.user_emb, self.item_emb, self.item_bias]
        optimizer = torch.optim.Adam(params, lr=learning_rate)
        for _ in range(epochs):
            order = torch.randperm(len(pos_u), generator=self.generator)
            for start in range(0, len(order), 1024):
                batch = order[start : start + 1024]
                u, i = pos_u[batch], pos_i[batch]
                j = torch.randint(len(self.item_index), (len(batch),), generator=self.generator)
                diff = (self.user_emb[u] * (self.item_emb[i] - self.item_emb[j])).sum(-1)
                diff = diff + self.item_bias[i] - self.item_bias[j]
                rows = self.user_emb[u].square().sum(-1) + self.item_emb[i].square().sum(-1)
                rows = rows + self.item_emb[j].square().sum(-1)
                loss = -torch.nn.functional.logsigmoid(diff).mean() + l2 * rows.mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    @torch.no_grad()
    def item_scores(self, user: str) -> np.ndarray:
        """The user's score of every item (in the order of ``item_index``)."""
        return (self.item_emb @ self.user_emb[self.user_index[user]] + self.item_bias).numpy()

    @torch.no_grad()
    def ranks(self, cases: list[RankingCase]) -> list[int]:
        """The target's rank in every case."""
        ranks = []
        for case in cases:
            cand = torch.tensor([self.item_index[i] for i in case.candidates])
            scores = self.item_emb[cand] @ self.user_emb[self.user_index[case.user]] + self.item_bias[cand]
            ranks.append(target_rank(scores.numpy()))
        return ranks


def _ids(train: pd.DataFrame, cases: list[RankingCase], catalog: list[str]) -> tuple[list[str], list[str]]:
    users = sorted(set(train["user"]) | {c.user for c in cases})
    return users, sorted(set(catalog) | set(train["item"]) | {i for c in cases for i in c.candidates})


def bpr_mf(
    train: pd.DataFrame, cases: list[RankingCase], catalog: list[str], like_threshold: float, seed: int = 0
) -> BPRModel:
    """A centralized BPR matrix factorization of the training likes."""
    model = BPRModel(*_ids(train, cases, catalog), dim=32, seed=seed)
    model.fit(train[train["rating"] > like_threshold], epochs=30, learning_rate=0.05)
    return model


def federated_mf(
    train: pd.DataFrame,
    cases: list[RankingCase],
    catalog: list[str],
    partitions: list[list[str]],
    like_threshold: float,
    rounds: int = 30,
    seed: int = 0,
) -> BPRModel:
    """Ranks by federated BPR-MF: each client keeps its users' embeddings and trains
    one local epoch per round from the global item embeddings and biases, which the
    server averages weighted by the clients' likes (FedAvg; no privacy mechanism).
    """
    model = BPRModel(*_ids(train, cases, catalog), dim=32, seed=seed)
    likes = train[train["rating"] > like_threshold]
    client_likes = [likes[likes["user"].isin(set(users))] for users in partitions]
    for _ in range(rounds):
        start_emb, start_bias = model.item_emb.detach().clone(), model.item_bias.detach().clone()
        total_emb, total_bias, total = torch.zeros_like(start_emb), torch.zeros_like(start_bias), 0
        for client in client_likes:
            if client.empty:
                continue
            with torch.no_grad():
                model.item_emb.copy_(start_emb)
                model.item_bias.copy_(start_bias)
            model.fit(client, epochs=1, learning_rate=0.05)  # other clients' user rows get no gradient
            total_emb += len(client) * model.item_emb.detach()
            total_bias += len(client) * model.item_bias.detach()
            total += len(client)
        with torch.no_grad():
            model.item_emb.copy_(total_emb / total)
            model.item_bias.copy_(total_bias / total)
    return model


def full_catalog_metrics(
    item_scores: Callable[[str], np.ndarray], items: list[str], cases: list[RankingCase], rated: dict[str, set[str]]
) -> dict[str, float]:
    """Recall@20 (the target among every item the user did not rate) and coverage@10
    (share of the catalog in some user's top 10) of a scorer of all ``items``.
    """
    index = {item: n for n, item in enumerate(items)}
    names = np.array(items)
    ranks, tops = [], []
    for case in cases:
        scores = item_scores(case.user)
        target = index[case.candidates[0]]
        allowed = np.ones(len(items), dtype=bool)
        allowed[[index[i] for i in rated.get(case.user, set()) if i in index]] = False
        ranks.append(target_rank(np.concatenate([[scores[target]], scores[allowed]])))
        allowed[target] = True
        candidates = np.flatnonzero(allowed)
        tops.append(names[candidates[np.argsort(-scores[candidates], kind="stable")[:K]]].tolist())
    return {"recall@20": hit_rate_at_k(ranks, 20), "coverage@10": catalog_coverage(tops, len(items))}


def ranking_baselines(
    train: pd.DataFrame,
    cases: list[RankingCase],
    catalog: list[str],
    rated: dict[str, set[str]],
    partitions: list[list[str]],
    like_threshold: float,
    seed: int,
) -> dict[str, dict[str, float]]:
    """HR@10 / NDCG@10 on the cases, and Recall@20 / coverage@10 over the whole catalog,
    of each baseline (federated MF over ``partitions``). ``rated``: every item each user
    rated (never recommended, except the held-out target).
    """
    counts = train["item"].value_counts().to_dict()
    popularity = np.array([counts.get(item, 0) for item in catalog], dtype=float)
    results = {
        "most-popular": ranking_metrics(popularity_ranks(train, cases))
        | full_catalog_metrics(lambda _: popularity, catalog, cases, rated)
    }
    models = {
        "bpr-mf": bpr_mf(train, cases, catalog, like_threshold, seed),
        "federated-mf": federated_mf(train, cases, catalog, partitions, like_threshold, seed=seed),
    }
    for name, model in models.items():
        items = sorted(model.item_index, key=model.item_index.get)
        results[name] = ranking_metrics(model.ranks(cases)) | full_catalog_metrics(
            model.item_scores, items, cases, rated
        )
    return results


def random_expectation(num_candidates: int, k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of a uniformly random ranking."""
    ranks = np.arange(num_candidates)
    return {f"hr@{k}": hit_rate_at_k(ranks, k), f"ndcg@{k}": ndcg_at_k(ranks, k)}
