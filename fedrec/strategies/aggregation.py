"""What every fedrec strategy does around Flower's aggregation: leave out clients
that declined the round, complete the adapters of lower-rank clients, and pool
evaluation metrics from score histograms.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ..metrics import auc_from_histograms
from ..models.adapter import AdapterMismatchError, pad_to_rank


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


class AdapterAggregation:
    """Mixin placed before a Flower ``FedAvg``-family strategy.

    Replies of clients that declined carry no adapter and are left out (their reasons
    logged); when every client declines, the strategy keeps the global adapter. With
    ``client_ranks`` (heterogeneous ranks, A frozen), a reply whose LoRA B has only a
    client rank's columns is completed with the global adapter's other columns, so
    the weighted average is that of the clients' products ``B A`` (exact); a reply of
    any other shape is left out with a logged reason.
    """

    def __init__(self, *, client_ranks: Iterable[int] = (), **kwargs: object) -> None:
        kwargs.setdefault("evaluate_metrics_aggr_fn", pooled_evaluation_metrics)
        super().__init__(**kwargs)
        self.client_ranks = set(client_ranks)
        self.global_arrays: ArrayRecord | None = None  # of the round being configured

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global adapter, then configure as the strategy does."""
        self.global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the adapters of the clients that trained."""
        trained = []
        for msg in replies:
            if is_declined(msg):
                log(
                    INFO,
                    "\t> node %d declined round %d: %s",
                    msg.metadata.src_node_id,
                    server_round,
                    decline_reason(msg),
                )
            elif self.client_ranks and not msg.has_error():
                try:
                    trained.append(self._full_rank(msg))
                except AdapterMismatchError as err:
                    log(WARNING, "\t> node %d left out of round %d: %s", msg.metadata.src_node_id, server_round, err)
            else:
                trained.append(msg)
        arrays, metrics = super().aggregate_train(server_round, trained)
        return self._in_global_dtypes(arrays), metrics

    def _in_global_dtypes(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """Server optimizers compute in float64; the adapter keeps its own dtypes."""
        if arrays is None or self.global_arrays is None:
            return arrays
        dtypes = {name: array.numpy().dtype for name, array in self.global_arrays.items()}
        return ArrayRecord({name: Array(array.numpy().astype(dtypes[name])) for name, array in arrays.items()})

    def _full_rank(self, msg: Message) -> Message:
        if self.global_arrays is None:
            raise RuntimeError("aggregate_train before configure_train: no global adapter to complete ranks from")
        full = {name: array.numpy() for name, array in self.global_arrays.items()}
        arrays = msg.content.array_records["arrays"]
        padded = pad_to_rank({name: array.numpy() for name, array in arrays.items()}, full, self.client_ranks)
        msg.content["arrays"] = ArrayRecord({name: Array(values) for name, values in padded.items()})
        return msg
