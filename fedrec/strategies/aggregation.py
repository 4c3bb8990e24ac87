"""What every fedrec strategy does around Flower's aggregation: leave out clients
that declined the round or sent a faulty update (with the reason logged and kept),
complete the adapters of lower-rank clients, and count rounds as the run does.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from ..models.wire import AdapterMismatchError, pad_to_rank
from ..protocol.records import ARRAYS, METRICS
from ..protocol.replies import decline_reason, is_declined

REPLY_RECORDS = {ARRAYS, METRICS}


def update_fault(
    msg: Message, global_arrays: ArrayRecord, client_ranks: set[int], weighted_by_key: str, max_weight: float
) -> tuple[str | None, Message]:
    """Why a training reply cannot be aggregated (``None`` if it can), and the reply
    with a lower-rank B completed from ``global_arrays``. A reply must carry exactly
    the records ``arrays`` and ``metrics``, a finite weight in ``(0, max_weight]``, and
    floating-point tensors of the global adapter's names and shapes (or a configured
    rank's B) whose values are finite.
    """
    content = msg.content
    if set(content.keys()) != REPLY_RECORDS:
        return f"malformed reply: records {sorted(content.keys())}, expected {sorted(REPLY_RECORDS)}", msg
    weight = content.metric_records[METRICS].get(weighted_by_key)
    if not isinstance(weight, int | float) or not 0 < weight <= max_weight:
        return f"'{weighted_by_key}' is {weight!r}, expected a number in (0, {max_weight:g}]", msg
    arrays = content.array_records[ARRAYS]
    full = {name: array.numpy() for name, array in global_arrays.items()}
    try:
        received = {name: array.numpy() for name, array in arrays.items()}
        padded = pad_to_rank(received, full, client_ranks)
    except (AdapterMismatchError, ValueError, TypeError) as err:
        return f"mis-shaped update: {err}", msg
    for name, values in padded.items():
        if values.dtype.kind != "f":
            return f"'{name}' has dtype {values.dtype}, expected floating point", msg
        if not np.isfinite(values).all():
            return f"'{name}' holds non-finite values", msg
    if any(received[name] is not padded[name] for name in padded):
        content[ARRAYS] = ArrayRecord({name: Array(values) for name, values in padded.items()})
    return None, msg


class AdapterAggregation:
    """Mixin placed before a Flower ``FedAvg``-family strategy.

    Replies of clients that declined carry no adapter and are left out (their reasons
    logged); when every client declines, the strategy keeps the global adapter. With
    ``client_ranks`` (heterogeneous ranks, A frozen), a reply whose LoRA B has only a
    client rank's columns is completed with the global adapter's other columns, so
    the weighted average is that of the clients' products ``B A`` (exact). A faulty
    reply (see :func:`update_fault`) is left out of its round with a logged reason,
    kept in ``excluded``; the round aggregates the others.
    """

    def __init__(self, *, client_ranks: Iterable[int] = (), max_weight: float = 10_000.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.client_ranks = set(client_ranks)
        self.max_weight = max_weight
        self.global_arrays: ArrayRecord | None = None  # of the round being configured
        self.excluded: dict[int, dict[int, str]] = {}  # round -> node -> why its update was left out
        self.round_offset = 0  # a resumed run: Flower counts from 1, the run from the round after its checkpoint

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global adapter, then configure as the strategy does."""
        self.global_arrays = arrays
        return super().configure_train(server_round + self.round_offset, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure evaluation as the strategy does, in the run's round numbers."""
        return super().configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate evaluation as the strategy does, in the run's round numbers."""
        return super().aggregate_evaluate(server_round + self.round_offset, replies)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the adapters of the clients that trained."""
        server_round += self.round_offset
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
            elif msg.has_error():
                trained.append(msg)  # Flower logs and skips it
            else:
                if self.global_arrays is None:
                    raise RuntimeError("aggregate_train before configure_train: no global adapter to check against")
                fault, msg = update_fault(
                    msg, self.global_arrays, self.client_ranks, self.weighted_by_key, self.max_weight
                )
                if fault is None:
                    trained.append(msg)
                else:
                    node = msg.metadata.src_node_id
                    self.excluded.setdefault(server_round, {})[node] = fault
                    log(WARNING, "\t> node %d left out of round %d: %s", node, server_round, fault)
        arrays, metrics = super().aggregate_train(server_round, trained)
        return self._in_global_dtypes(arrays), metrics

    def _in_global_dtypes(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """Server optimizers compute in float64; the adapter keeps its own dtypes."""
        if arrays is None or self.global_arrays is None:
            return arrays
        dtypes = {name: array.numpy().dtype for name, array in self.global_arrays.items()}
        return ArrayRecord({name: Array(array.numpy().astype(dtypes[name])) for name, array in arrays.items()})
