"""A ``Grid`` wrapper that measures every message.

It forwards all calls to the real grid and records, for each message sent or
received, its type, node, serialized content size and reply metrics. Any strategy's
``start(grid=RecordingGrid(grid), ...)`` is measured without changing the strategy.
Its ``send_and_receive`` pushes and pulls through the recorded calls and hands back
replies within 5 ms of their arrival (:func:`~fedrec.protocol.exchange.replies_as_they_arrive`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from ..protocol.exchange import DelegatingGrid, replies_as_they_arrive
from ..protocol.replies import readable_reason, reply_metrics
from ..protocol.secagg import stage_of


def content_bytes(content: RecordDict) -> int:
    """Serialized size of a message's records (as Flower's comms mods count it)."""
    return sum(_record_bytes(record) for record in content.values())


def _record_bytes(record: ArrayRecord | ConfigRecord | MetricRecord) -> int:
    if isinstance(record, ConfigRecord):  # Flower cannot size empty lists; they carry no values
        record = ConfigRecord({k: v for k, v in record.items() if not (isinstance(v, list) and not v)})
    return record.count_bytes()


@dataclass(frozen=True)
class Exchange:
    """One message: ``direction`` is ``down`` (to a node) or ``up`` (a reply)."""

    direction: str
    message_type: str
    node_id: int
    num_bytes: int
    error: str | None = None
    metrics: dict[str, object] = field(default_factory=dict)
    configs: dict[str, object] = field(default_factory=dict)
    stage: str | None = None  # the secure-aggregation stage, if the message is one


class RecordingGrid(DelegatingGrid):
    """Delegates to ``grid`` and keeps an :class:`Exchange` per message."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self._pending: list[Exchange] = []

    def take(self) -> list[Exchange]:
        """The exchanges since the last call."""
        taken, self._pending = self._pending, []
        return taken

    # --- recording ---
    def _record_sent(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for msg in messages:
            self._pending.append(
                Exchange(
                    "down",
                    msg.metadata.message_type,
                    msg.metadata.dst_node_id,
                    content_bytes(msg.content),
                    stage=stage_of(msg.content),
                )
            )
        return messages

    def _record_replies(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for msg in replies:
            meta = msg.metadata
            if msg.has_error():
                reason = readable_reason(msg.error.reason)
                self._pending.append(Exchange("up", meta.message_type, meta.src_node_id, 0, reason))
                continue
            metrics = reply_metrics(msg)
            configs = {k: v for rec in msg.content.config_records.values() for k, v in rec.items()}
            self._pending.append(
                Exchange(
                    "up",
                    meta.message_type,
                    meta.src_node_id,
                    content_bytes(msg.content),
                    None,
                    metrics,
                    configs,
                    stage_of(msg.content),
                )
            )
        return replies

    # --- recorded calls ---
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._grid.push_messages(self._record_sent(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._record_replies(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push and pull (both recorded), replies handled as they arrive."""
        return list(replies_as_they_arrive(self, list(messages), timeout))
