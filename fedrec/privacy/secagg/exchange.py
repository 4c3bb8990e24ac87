"""Sending one SecAgg+ stage to a round's nodes and handling replies as they arrive; a
node whose reply fails or never comes is dropped with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ...protocol.exchange import replies_as_they_arrive
from ...protocol.replies import readable_reason
from ...protocol.secagg import SECAGG_RECORD, ProtocolError
from .crypto import SecAggError

Handler = Callable[[int, ConfigRecord, Message], None]


class StageExchange:
    """The stages of one round: its requests (one train message per node), the nodes
    dropped so far and why, and the wall time of each stage.
    """

    def __init__(self, grid: Grid, requests: dict[int, Message]) -> None:
        self.grid, self.requests = grid, requests
        self.group_id = next(iter(requests.values())).metadata.group_id
        self.dropped: dict[int, str] = {}
        self.seconds: dict[str, float] = {}

    def run(
        self,
        stage: str,
        nodes: list[int],
        record_of: Callable[[int], ConfigRecord],
        timeout: float | None,
        handle: Handler | None = None,
        carry_request: bool = False,
    ) -> dict[int, Message]:
        """Send ``stage`` (``record_of(node)``, beside the train request when
        ``carry_request``) to ``nodes``; pass each reply to ``handle`` as it arrives.
        Returns the replies of the nodes that answered correctly.
        """
        messages = []
        for node in nodes:
            request = self.requests[node]
            content = RecordDict(dict(request.content.items())) if carry_request else RecordDict()
            content[SECAGG_RECORD] = record_of(node)
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=self.group_id))
        answered: dict[int, Message] = {}
        started = time.perf_counter()
        for reply in replies_as_they_arrive(self.grid, messages, timeout):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise SecAggError(reply.error.reason)
                record = reply.content.config_records.get(SECAGG_RECORD)
                if record is None:
                    raise SecAggError(f"the reply to {stage} carries no {SECAGG_RECORD!r} record")
                if handle is not None:
                    handle(node, record, reply)
            except (SecAggError, ProtocolError, KeyError, ValueError, TypeError) as err:
                self.drop(node, f"{stage}: {readable_reason(str(err))}")
                continue
            answered[node] = reply
        self.seconds[stage] = time.perf_counter() - started
        for node in nodes:
            if node not in answered and node not in self.dropped:
                self.drop(node, f"{stage}: no reply within the timeout")
        return answered

    def drop(self, node: int, reason: str) -> None:
        """Leave ``node`` out of the rest of the round."""
        self.dropped[node] = reason
        log(WARNING, "secure aggregation: node %d dropped at %s", node, reason)
