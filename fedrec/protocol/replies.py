"""Training replies: an adapter with metrics, or a decline with its reason."""

from __future__ import annotations

import re
from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from .records import ARRAYS, DECLINE, DECLINED, METRICS, NUM_EXAMPLES, REASON

MetricValue = int | float | list[int] | list[float]
REASON_LENGTH = 240  # characters kept of a failure's reason
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def train_reply(request: Message, arrays: ArrayRecord, metrics: Mapping[str, MetricValue]) -> Message:
    """A reply carrying the trained adapter and the round's metrics."""
    return Message(RecordDict({ARRAYS: arrays, METRICS: MetricRecord(dict(metrics))}), reply_to=request)


def decline_reply(request: Message, reason: str, metrics: Mapping[str, MetricValue]) -> Message:
    """A reply that trains nothing: no adapter, ``declined = 1`` and the reason."""
    content = RecordDict(
        {
            METRICS: MetricRecord({NUM_EXAMPLES: 0, DECLINED: 1, **metrics}),
            DECLINE: ConfigRecord({REASON: reason}),
        }
    )
    return Message(content=content, reply_to=request)


def is_declined(message: Message) -> bool:
    """Whether a reply says the client declined this round (e.g. privacy budget)."""
    if message.has_error():
        return False
    metrics = message.content.metric_records.get(METRICS)
    return metrics is not None and bool(metrics.get(DECLINED, 0))


def decline_reason(message: Message) -> str:
    """The reason a declining client gave."""
    record = message.content.config_records.get(DECLINE)
    return str(record[REASON]) if record is not None else "no reason given"


def reply_metrics(message: Message) -> dict[str, MetricValue]:
    """Every metric of a reply (all its metric records merged)."""
    return {k: v for record in message.content.metric_records.values() for k, v in record.items()}


def readable_reason(reason: str) -> str:
    """A failure's reason as one readable line: terminal colour codes removed and, of a
    traceback (a Ray worker's, say), its last line, the exception; at most
    ``REASON_LENGTH`` characters.
    """
    lines = [line.strip() for line in _TERMINAL_CODES.sub("", reason).splitlines() if line.strip()]
    line = lines[-1] if lines else "no reason given"
    return line if len(line) <= REASON_LENGTH else line[: REASON_LENGTH - 1] + "…"
