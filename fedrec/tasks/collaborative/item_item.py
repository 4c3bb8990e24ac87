"""The item-item model (``recommender = 'ease'``): EASE (Steck, 2019), fitted in closed
form from the co-occurrence of likes summed over the clients
(:mod:`fedrec.privacy.item_cooccurrence`). A user's score of an item is their liked-items
vector times the item's column of the weights: the user needs only their own likes, on
their device, and nothing of theirs is trained or sent after the one release.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from ..metrics import target_rank
from ..preference.dataset import CentralSplit
from ..preference.evaluation import preference_metrics
from ..ranking.baselines import full_catalog_metrics
from ..ranking.cases import RankingCase
from ..ranking.ranker import ranking_metrics
from .training import catalog_order

ITEM_WEIGHTS = "ease.item-weights"  # the fitted items x items weights, in catalog order


def fit_ease(gram: np.ndarray, l2: float, rank: int = 0) -> np.ndarray:
    """EASE's weights ``B = I - P / diag(P)`` with ``P = (G + l2 I)^-1`` and a zero
    diagonal. With ``rank`` > 0, ``G`` is first replaced by its best rank-``rank``
    approximation (its top eigenpairs): post-processing that removes most of a noised
    Gram's noise, which spreads over every direction while the likes' structure does not.
    """
    if rank:
        values, vectors = np.linalg.eigh(gram)
        top = vectors[:, -rank:]
        gram = (top * values[-rank:]) @ top.T
    precision = np.linalg.inv(gram + l2 * np.eye(len(gram)))
    weights = -precision / np.diag(precision)  # column j divided by P_jj
    np.fill_diagonal(weights, 0.0)
    return weights


class ItemItemEvaluator:
    """Scores the evaluation users' held-out interactions (and ranking cases) with a
    run's item-item weights and each user's own training likes.
    """

    def __init__(
        self, central: CentralSplit, like_threshold: float, cases: list[RankingCase] | None = None, part: str = "test"
    ) -> None:
        self.examples = central.held_out_examples(part)
        self.cases = cases or []
        self.items = catalog_order(central.data.items["item"])
        users = sorted({ex.user for ex in self.examples} | {case.user for case in self.cases})
        self.user_row = {user: n for n, user in enumerate(users)}
        self.item_row = {item: n for n, item in enumerate(self.items)}
        train = central.split.train_interactions
        likes = train[(train["rating"] > like_threshold) & train["user"].isin(self.user_row)]
        self.likes = np.zeros((len(users), len(self.items)))
        self.likes[[self.user_row[u] for u in likes["user"]], [self.item_row[str(i)] for i in likes["item"]]] = 1.0
        self.rated = central.data.interactions.groupby("user")["item"].agg(set).to_dict()
        self.scores = np.zeros_like(self.likes)

    def __call__(self, arrays: ArrayRecord, rank: bool = True) -> dict[str, float]:
        """AUC and UAUC of the held-out interactions and, when there are ranking cases and
        ``rank`` is true, HR@10 and NDCG@10 among each case's candidates and Recall@20 and
        coverage@10 over the whole catalog.
        """
        weights = arrays[ITEM_WEIGHTS].numpy().astype(np.float64)
        if weights.shape != (len(self.items),) * 2:
            raise ValueError(f"item-item weights of shape {weights.shape}; the catalog has {len(self.items)} items")
        self.scores = self.likes @ weights
        scores = np.array([self.scores[self.user_row[ex.user], self.item_row[ex.item]] for ex in self.examples])
        metrics: dict[str, float] = {**preference_metrics(self.examples, scores), "examples": len(self.examples)}
        if self.cases and rank:
            ranks = [target_rank(self._candidate_scores(case)) for case in self.cases]
            metrics |= ranking_metrics(ranks)
            metrics |= full_catalog_metrics(self.catalog_scores, self.items, self.cases, self.rated)
        return metrics

    def _candidate_scores(self, case: RankingCase) -> np.ndarray:
        return self.scores[self.user_row[case.user], [self.item_row[i] for i in case.candidates]]

    def catalog_scores(self, user: str) -> np.ndarray:
        """Every catalog item's score for an evaluation user (after a call)."""
        return self.scores[self.user_row[user]]
