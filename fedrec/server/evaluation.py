"""Central evaluation of the global adapter on the harness's held-out users."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord

from ..data.federation import CentralSplit
from ..data.ranking import RankingCase
from ..metrics import roc_auc
from ..models.adapter import load_adapter_arrays
from ..models.scorer import PreferenceScorer
from ..simulation.ranking import LLMRanker, ranking_metrics


class CentralEvaluator:
    """Scores each evaluation user's held-out interactions with a given adapter.

    Prompts are tokenized once; the frozen part of the forward is cached by the
    scorer, so evaluations after the first only run the LoRA layers.
    """

    def __init__(
        self,
        scorer: PreferenceScorer,
        central: CentralSplit,
        batch_size: int,
        ranking_cases: list[RankingCase] | None = None,
    ) -> None:
        self.scorer = scorer
        self.examples = central.test_examples()
        self.tokens = scorer.encode(central.prompts(self.examples))
        self.labels = np.array([ex.label for ex in self.examples])
        self.batch_size = batch_size
        self.ranker = LLMRanker(scorer, ranking_cases, central.prompts, batch_size) if ranking_cases else None

    def __call__(self, arrays: ArrayRecord, rank: bool = True) -> dict[str, float]:
        """AUC and log-loss of the adapter in ``arrays``, and HR@10, NDCG@10 when it has
        ranking cases and ``rank`` is true.
        """
        load_adapter_arrays(self.scorer, arrays, "global adapter")
        scores = self.scorer.score(self.tokens, batch_size=self.batch_size)
        loss = F.binary_cross_entropy_with_logits(scores, torch.tensor(self.labels, dtype=torch.float32))
        metrics = {"auc": roc_auc(self.labels, scores.numpy()), "loss": float(loss), "examples": len(self.labels)}
        if self.ranker is not None and rank:
            metrics |= ranking_metrics(self.ranker.ranks())
        return metrics
