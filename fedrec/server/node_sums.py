"""A release summed over every node before round 1 (item statistics, the co-occurrence
of likes): each node is asked once, with weight 1, and the replies are summed with
SecAgg+ when secure aggregation is on (the server learns only the sum), in the clear
otherwise.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from ..config import FedRecConfig
from ..privacy.secagg.grid import SecAggGrid, masking_parameters
from ..protocol.records import ARRAYS, CLIENT_DP_WEIGHT, CONFIG, SERVER_ROUND, STATISTICS_CLIENTS, TASK
from ..protocol.replies import decline_reason, is_declined
from .federation import Federation
from .recording_grid import Exchange


def sum_over_nodes(
    cfg: FedRecConfig, federation: Federation, task: str, shapes: dict[str, int]
) -> tuple[dict[str, np.ndarray], int]:
    """Ask every node for ``task`` (arrays of the lengths ``shapes`` names); returns the
    sums of the replies' arrays and the number of nodes summed. The exchanges stay in
    ``federation.recording`` for the caller to take.
    """
    nodes = _all_nodes(federation, cfg.federation.num_clients, cfg.federation.round_timeout)
    config = {SERVER_ROUND: 0, TASK: task, STATISTICS_CLIENTS: len(nodes)}
    messages = [
        Message(
            RecordDict({ARRAYS: _zeros(shapes), CONFIG: ConfigRecord(config)}),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
            group_id=task,
        )
        for node in nodes
    ]
    grid = federation.recording
    if cfg.secagg.secure_aggregation:  # its own keys; each node's weight is 1, so the aggregate is the mean
        masking = masking_parameters(cfg.secagg, CLIENT_DP_WEIGHT, 1.0)
        grid = SecAggGrid(federation.recording, cfg.secagg, masking, seed=cfg.federation.seed + 1)
    received = list(grid.send_and_receive(messages, timeout=cfg.federation.round_timeout))
    replies = [r for r in received if not r.has_error() and not is_declined(r)]  # a decline's share is not summed
    if not replies:
        raise RuntimeError(f"no node answered the {task} request: {_why_not(received)}")
    if cfg.secagg.secure_aggregation:  # every reply carries the same mean of the survivors' weight-1 inputs: read one
        mean = replies[0].content.array_records[ARRAYS]
        return {name: mean[name].numpy().astype(np.float64) * len(replies) for name in shapes}, len(replies)
    total = {name: np.zeros(size) for name, size in shapes.items()}
    for reply in replies:  # one reply's arrays at a time
        arrays = reply.content.array_records[ARRAYS]
        for name in shapes:
            total[name] += arrays[name].numpy()
    return total, len(replies)


def _why_not(received: list[Message]) -> str:
    """The nodes' reasons for not answering: errors (SecAgg+ names declines in its own) and declines."""
    reasons = {r.error.reason if r.has_error() else f"declined: {decline_reason(r)}" for r in received}
    return " | ".join(sorted(reasons)) or "no reply"


def exchanged_bytes(exchanges: list[Exchange]) -> dict[str, int]:
    """Bytes the nodes sent and received in ``exchanges``."""
    return {
        "bytes_up": sum(e.num_bytes for e in exchanges if e.direction == "up"),
        "bytes_down": sum(e.num_bytes for e in exchanges if e.direction == "down"),
    }


def _zeros(shapes: dict[str, int]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.zeros(size, dtype=np.float32)) for name, size in shapes.items()})


def _all_nodes(federation: Federation, expected: int, timeout: float) -> list[int]:
    """The connected nodes, once ``expected`` of them are (or all there are after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(federation.recording.get_node_ids())) < expected and time.monotonic() < deadline:
        time.sleep(1.0)
    if not nodes:
        raise RuntimeError("no node connected for a request before round 1")
    return nodes
