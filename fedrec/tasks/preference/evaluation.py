"""Evaluating the preference task: a client's held-out examples (AUC, loss and the
score histograms it shares), pooling clients' histograms on the server, and the
harness's central evaluation of the global adapter.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from ...models.adapter import load_adapter_arrays
from ...models.prefix_store import PrefixStore
from ...models.scorer import Scorer
from ...protocol.records import AUC, LOSS, NEG_HIST, NUM_EXAMPLES, POS_HIST
from ..metrics import auc_from_histograms, auc_standard_error, roc_auc, score_histograms, user_auc
from ..ranking.ranker import Ranker
from .dataset import CentralSplit, FederatedData
from .examples import PreferenceExample
from .scoring import preference_loss
from .signals import CollaborativeSignals


def preference_metrics(examples: list[PreferenceExample], scores: np.ndarray) -> dict[str, float | int]:
    """Pooled AUC and UAUC (the mean of each user's AUC, over users with both classes
    among their held-out examples) of ``scores``, with their standard errors.
    """
    labels = np.array([ex.label for ex in examples])
    auc = roc_auc(labels, scores)
    uauc, uauc_se, uauc_users = user_auc([ex.user for ex in examples], labels, scores)
    positives = int(labels.sum())
    return {
        AUC: auc,
        "auc_se": auc_standard_error(auc, positives, len(labels) - positives),
        "uauc": uauc,
        "uauc_se": uauc_se,
        "uauc_users": uauc_users,
    }


def evaluate_examples(
    scorer: Scorer,
    data: FederatedData,
    examples: list[PreferenceExample],
    batch_size: int,
    store: PrefixStore | None,
    signals: torch.Tensor | None = None,
) -> dict[str, int | float | list[int]]:
    """A client's evaluation metrics: AUC (NaN with one class), loss, and the score
    histograms per label from which the server pools the AUC.
    """
    scores = scorer.score(scorer.encode(data.prompts(examples)), batch_size, store, signals)
    labels = np.array([ex.label for ex in examples])
    pos, neg = score_histograms(labels, scores.numpy())
    loss = preference_loss(scores, torch.tensor(labels, dtype=torch.float32)) if len(labels) else torch.tensor(0.0)
    return {
        NUM_EXAMPLES: len(examples),
        AUC: roc_auc(labels, scores.numpy()),
        LOSS: float(loss),
        POS_HIST: pos,
        NEG_HIST: neg,
    }


def pooled_evaluation_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """AUC pooled over all clients' held-out examples (from their score histograms),
    and the example-weighted mean loss (a strategy's ``evaluate_metrics_aggr_fn``).
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = np.array([float(m[weighted_by_key]) for m in metrics])
    pos = np.sum([np.asarray(m[POS_HIST], dtype=float) for m in metrics], axis=0)
    neg = np.sum([np.asarray(m[NEG_HIST], dtype=float) for m in metrics], axis=0)
    losses = np.array([float(m[LOSS]) for m in metrics])
    loss = float((weights * losses).sum() / weights.sum()) if weights.sum() else float("nan")
    return MetricRecord({AUC: auc_from_histograms(pos, neg), LOSS: loss, weighted_by_key: int(weights.sum())})


class CentralEvaluator:
    """Scores each evaluation user's held-out interactions with a given adapter.

    Prompts are tokenized once; the frozen part of the forward is cached by the
    scorer (and kept in ``store`` when given), so evaluations after the first only run
    the LoRA layers.
    """

    def __init__(
        self,
        scorer: Scorer,
        central: CentralSplit,
        batch_size: int,
        ranker: Ranker | None = None,
        part: str = "test",
        signals: CollaborativeSignals | None = None,
        store: PrefixStore | None = None,
    ) -> None:
        self.scorer, self.store = scorer, store
        self.examples = central.held_out_examples(part)
        self.tokens = scorer.encode(central.prompts(self.examples))
        self.signals = None if signals is None else signals.of(self.examples)
        self.labels = np.array([ex.label for ex in self.examples])
        self.batch_size = batch_size
        self.ranker = ranker

    def __call__(self, arrays: ArrayRecord, rank: bool = True) -> dict[str, float]:
        """AUC, UAUC (with standard errors) and log-loss of the adapter in ``arrays``, and
        HR@10, NDCG@10 when it has ranking cases and ``rank`` is true.
        """
        load_adapter_arrays(self.scorer, arrays, "global adapter")
        scores = self.scorer.score(self.tokens, self.batch_size, self.store, self.signals)
        loss = preference_loss(scores, torch.tensor(self.labels, dtype=torch.float32))
        metrics = preference_metrics(self.examples, scores.numpy()) | {
            "loss": float(loss),
            "examples": len(self.labels),
        }
        if self.ranker is not None and rank:
            metrics |= self.ranker.metrics()
        return metrics
