"""Central evaluation of the collaborative models on the preference and ranking tasks'
held-out interactions.

Matrix factorization: the evaluation users' embeddings stay on their clients, so the
evaluator folds each user in from their training likes against the global item tables
(as a new user's device would): the item tables are what the federation trains and what
is measured. The item-item model: each user's training ratings times the weights.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from ...models.collaborative import MatrixFactorization
from ...models.item_tables import catalog_order
from ..metrics import target_rank
from ..preference.dataset import CentralSplit
from ..preference.evaluation import preference_metrics
from ..ranking.baselines import full_catalog_metrics
from ..ranking.cases import RankingCase
from ..ranking.ranker import ranking_metrics
from .item_item import ItemItemScores
from .likes import Likes, fold_in
from .priors import ItemCounts, like_rate_logits


class CollaborativeEvaluator:
    """Scores the evaluation users' held-out interactions (and ranking cases) with the
    item tables of a round, each user folded in from their training likes; ``item_prior``
    (one value per catalog item, e.g. weighted federated popularity) is added to every score,
    and with ``item_counts`` (federated item statistics) ``like_rate_weight`` times the
    like-rate logits to every preference score.
    """

    def __init__(
        self,
        central: CentralSplit,
        like_threshold: float,
        dim: int,
        ranking_cases: list[RankingCase] | None = None,
        part: str = "test",
        item_prior: np.ndarray | None = None,
        item_counts: ItemCounts | None = None,
        like_rate_weight: float = 0.0,
    ) -> None:
        self.examples = central.held_out_examples(part)
        self.cases = ranking_cases or []
        self.items = catalog_order(central.data.items["item"])
        self.users = sorted({ex.user for ex in self.examples} | {case.user for case in self.cases})
        self.likes = Likes.of(central.split.train_interactions, like_threshold, self.users, self.items)
        self.model = MatrixFactorization(len(self.users), len(self.items), dim)
        self.item_prior = torch.as_tensor(item_prior, dtype=torch.float32) if item_prior is not None else None
        item_row = {item: n for n, item in enumerate(self.items)}
        user_row = {user: n for n, user in enumerate(self.users)}
        self.example_users = torch.tensor([user_row[ex.user] for ex in self.examples], dtype=torch.long)
        self.example_items = torch.tensor([item_row[ex.item] for ex in self.examples], dtype=torch.long)
        self.case_users = torch.tensor([user_row[case.user] for case in self.cases], dtype=torch.long)
        self.case_items = torch.tensor(
            [[item_row[i] for i in case.candidates] for case in self.cases], dtype=torch.long
        )
        self.user_row = user_row
        self.preference_prior = np.zeros(len(self.examples))
        if item_counts is not None and like_rate_weight:
            rows = self.example_items.tolist()
            self.preference_prior = like_rate_weight * like_rate_logits(item_counts, self.examples, rows)
        self.rated = central.data.interactions.groupby("user")["item"].agg(set).to_dict()

    def __call__(self, arrays: ArrayRecord, rank: bool = True) -> dict[str, float]:
        """AUC and UAUC (with standard errors) of the held-out interactions, and, when
        there are ranking cases and ``rank`` is true, HR@10 and NDCG@10 among each case's
        candidates and Recall@20 and coverage@10 over the whole catalog (as the baselines').
        """
        self.model.load_item_arrays({name: array.numpy() for name, array in arrays.items()}, "global item tables")
        fold_in(self.model, self.likes)
        with torch.no_grad():
            scores = self._scores(self.example_users, self.example_items[:, None])[:, 0].numpy()
        scores = scores + self.preference_prior
        metrics: dict[str, float] = {**preference_metrics(self.examples, scores), "examples": len(self.examples)}
        if self.cases and rank:
            with torch.no_grad():
                candidate_scores = self._scores(self.case_users, self.case_items).numpy()
            metrics |= ranking_metrics([target_rank(row) for row in candidate_scores])
            metrics |= full_catalog_metrics(self._catalog_scores, self.items, self.cases, self.rated)
        return metrics

    @torch.no_grad()
    def _catalog_scores(self, user: str) -> np.ndarray:
        """Every catalog item's score for a folded-in evaluation user."""
        catalog = torch.arange(len(self.items))[None]
        return self._scores(torch.tensor([self.user_row[user]]), catalog)[0].numpy()

    def _scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The model's scores plus the item prior, when there is one."""
        scores = self.model(users, items)
        return scores if self.item_prior is None else scores + self.item_prior[items]


class ItemItemEvaluator:
    """Scores the evaluation users' held-out interactions (and ranking cases) with a
    run's item-item weights and each user's own training ratings.
    """

    def __init__(
        self, central: CentralSplit, like_threshold: float, cases: list[RankingCase] | None = None, part: str = "test"
    ) -> None:
        self.central, self.like_threshold = central, like_threshold
        self.examples = central.held_out_examples(part)
        self.cases = cases or []
        self.users = sorted({ex.user for ex in self.examples} | {case.user for case in self.cases})
        self.rated = central.data.interactions.groupby("user")["item"].agg(set).to_dict()

    def __call__(self, arrays: ArrayRecord, rank: bool = True) -> dict[str, float]:
        """AUC and UAUC of the held-out interactions and, when there are ranking cases and
        ``rank`` is true, HR@10 and NDCG@10 among each case's candidates and Recall@20 and
        coverage@10 over the whole catalog.
        """
        train = self.central.split.train_interactions
        self.retriever = ItemItemScores(
            {name: array.numpy() for name, array in arrays.items()},
            self.central.data.items["item"],
            train,
            self.like_threshold,
            self.users,
            "the run's weights",
        )
        scores = {user: self.retriever.catalog_scores(user) for user in self.users}
        row = self.retriever.item_row
        example_scores = np.array([scores[ex.user][row[ex.item]] for ex in self.examples])
        metrics: dict[str, float] = {
            **preference_metrics(self.examples, example_scores),
            "examples": len(self.examples),
        }
        if self.cases and rank:
            ranks = [target_rank(scores[case.user][[row[i] for i in case.candidates]]) for case in self.cases]
            metrics |= ranking_metrics(ranks)
            metrics |= full_catalog_metrics(lambda user: scores[user], self.retriever.items, self.cases, self.rated)
        return metrics

    def catalog_scores(self, user: str) -> np.ndarray:
        """Every catalog item's score for an evaluation user (after a call)."""
        return self.retriever.catalog_scores(user)
