"""The item-statistics round a run holds before round 1 (``item-statistics = true``):
every node is asked for its noised item counts, summed with SecAgg+ when secure
aggregation is on (the server learns only the sum), in the clear otherwise. The sums are
kept in the results folder (``item-statistics.npz``), so a resumed run does not ask again.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from ..config import FedRecConfig
from ..files import write_atomic
from ..privacy.item_statistics import COUNT_UNIT, STATISTICS_FILE, user_level_epsilon
from ..privacy.secagg.grid import SecAggGrid, masking_parameters
from ..protocol.records import (
    ARRAYS,
    CLIENT_DP_WEIGHT,
    CONFIG,
    ITEM_LIKES,
    ITEM_RATINGS,
    ITEM_STATISTICS,
    SERVER_ROUND,
    STATISTICS_CLIENTS,
    TASK,
)
from ..tasks.collaborative.priors import ItemCounts
from .federation import Federation
from .privacy_log import privacy_lines
from .results import ResultsWriter

REPORT_FILE = "item-statistics.json"


def item_statistics(
    cfg: FedRecConfig, federation: Federation, num_items: int, writer: ResultsWriter
) -> tuple[ItemCounts, dict[str, Any]]:
    """The run's item counts and their report (clients, noise, epsilon, bytes): from the
    results folder when a resumed run has them, else asked for and kept there, with the
    clients' privacy reports of the release (round 0 of ``privacy.jsonl``).
    """
    folder = writer.folder
    path, report_path = folder / STATISTICS_FILE, folder / REPORT_FILE
    if path.exists() and report_path.exists():
        with np.load(path) as stored:
            counts = ItemCounts(stored[ITEM_RATINGS], stored[ITEM_LIKES], _noise_std(cfg))
        return counts, json.loads(report_path.read_text())
    counts, report, privacy = collect_item_statistics(cfg, federation, num_items)
    writer.append_privacy(privacy)
    buffer = io.BytesIO()
    np.savez(buffer, **{ITEM_RATINGS: counts.ratings, ITEM_LIKES: counts.likes})
    write_atomic(path, buffer.getvalue())
    write_atomic(report_path, json.dumps(report, indent=2) + "\n")
    line = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items())
    print(f"[fedrec] item statistics: {line}", flush=True)
    return counts, report


def collect_item_statistics(
    cfg: FedRecConfig, federation: Federation, num_items: int
) -> tuple[ItemCounts, dict, list[dict[str, Any]]]:
    """Ask every node for its counts and sum them; returns the sums, what was spent and
    the nodes' privacy reports.
    """
    nodes = _all_nodes(federation, cfg.federation.num_clients, cfg.federation.round_timeout)
    zeros = np.zeros(num_items, dtype=np.float32)
    config = {SERVER_ROUND: 0, TASK: ITEM_STATISTICS, STATISTICS_CLIENTS: len(nodes)}
    messages = [
        Message(
            RecordDict(
                {
                    ARRAYS: ArrayRecord({ITEM_RATINGS: Array(zeros), ITEM_LIKES: Array(zeros)}),
                    CONFIG: ConfigRecord(config),
                }
            ),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
            group_id="item-statistics",
        )
        for node in nodes
    ]
    grid = federation.recording
    if cfg.secagg.secure_aggregation:  # its own keys; each node's weight is 1, so the aggregate is the mean
        masking = masking_parameters(cfg.secagg, CLIENT_DP_WEIGHT, 1.0)
        grid = SecAggGrid(federation.recording, cfg.secagg, masking, seed=cfg.federation.seed + 1)
    replies = [r for r in grid.send_and_receive(messages, timeout=cfg.federation.round_timeout) if not r.has_error()]
    if not replies:
        raise RuntimeError("no node answered the item-statistics request")
    arrays = [
        {name: a.numpy().astype(np.float64) for name, a in r.content.array_records[ARRAYS].items()} for r in replies
    ]
    if cfg.secagg.secure_aggregation:  # every reply carries the mean of the survivors
        total = {name: values * len(replies) for name, values in arrays[0].items()}
    else:
        total = {name: sum(a[name] for a in arrays) for name in (ITEM_RATINGS, ITEM_LIKES)}
    exchanges = federation.recording.take()
    stats = cfg.item_statistics
    report = {
        "clients": len(replies),
        "noise_multiplier": stats.item_statistics_noise,
        "bound": stats.item_statistics_bound,
        "user_level_epsilon": user_level_epsilon(stats.item_statistics_noise, cfg.record_dp.target_delta)
        if stats.item_statistics_noise > 0
        else None,
        "delta": cfg.record_dp.target_delta,
        "bytes_up": sum(e.num_bytes for e in exchanges if e.direction == "up"),
        "bytes_down": sum(e.num_bytes for e in exchanges if e.direction == "down"),
    }
    counts = ItemCounts(total[ITEM_RATINGS] * COUNT_UNIT, total[ITEM_LIKES] * COUNT_UNIT, _noise_std(cfg))
    return counts, report, privacy_lines(0, exchanges)


def _noise_std(cfg: FedRecConfig) -> float:
    """The std of the noise on each summed count (when every node asked answered)."""
    return cfg.item_statistics.item_statistics_noise * cfg.item_statistics.item_statistics_bound


def _all_nodes(federation: Federation, expected: int, timeout: float) -> list[int]:
    """The connected nodes, once ``expected`` of them are (or all there are after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(federation.recording.get_node_ids())) < expected and time.monotonic() < deadline:
        time.sleep(1.0)
    if not nodes:
        raise RuntimeError("no node connected for the item-statistics request")
    return nodes
