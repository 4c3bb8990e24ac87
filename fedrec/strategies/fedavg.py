"""FedAvg over LoRA adapters (Message API), aware of clients that decline to train."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from ..metrics import auc_from_histograms


def is_declined(message: Message) -> bool:
    """Whether a reply says the client declined this round (e.g. privacy budget)."""
    if message.has_error():
        return False
    metrics = message.content.metric_records.get("metrics")
    return metrics is not None and bool(metrics.get("declined", 0))


def decline_reason(message: Message) -> str:
    """The reason a declining client gave."""
    record = message.content.config_records.get("decline")
    return str(record["reason"]) if record is not None else "no reason given"


def pooled_evaluation_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """AUC pooled over all clients' held-out examples (from their score histograms),
    and the example-weighted mean loss.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = np.array([float(m[weighted_by_key]) for m in metrics])
    pos = np.sum([np.asarray(m["pos-hist"], dtype=float) for m in metrics], axis=0)
    neg = np.sum([np.asarray(m["neg-hist"], dtype=float) for m in metrics], axis=0)
    losses = np.array([float(m["loss"]) for m in metrics])
    loss = float((weights * losses).sum() / weights.sum()) if weights.sum() else float("nan")
    return MetricRecord({"auc": auc_from_histograms(pos, neg), "loss": loss, weighted_by_key: int(weights.sum())})


class FedAvgLoRA(FedAvg):
    """Flower's FedAvg over adapter tensors, weighted by ``num-examples``.

    Replies of clients that declined the round carry no adapter and are left out of
    the average (their reasons are logged); when every client declines, the global
    adapter stays as it was. Evaluation metrics are pooled from score histograms.
    """

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("evaluate_metrics_aggr_fn", pooled_evaluation_metrics)
        super().__init__(**kwargs)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the adapters of the clients that trained."""
        replies = list(replies)
        for msg in replies:
            if is_declined(msg):
                log(
                    INFO,
                    "\t> node %d declined round %d: %s",
                    msg.metadata.src_node_id,
                    server_round,
                    decline_reason(msg),
                )
        return super().aggregate_train(server_round, [m for m in replies if not is_declined(m)])
