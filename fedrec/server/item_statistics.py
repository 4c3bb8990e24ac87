"""The item-statistics round a run holds before round 1 (``item-statistics = true``):
every node is asked for its noised item counts, summed with SecAgg+ when secure
aggregation is on (the server learns only the sum), in the clear otherwise. The sums are
kept in the results folder (``item-statistics.npz``), so a resumed run does not ask again.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from ..config import FedRecConfig
from ..files import write_atomic
from ..privacy.item_statistics import COUNT_UNIT, user_level_epsilon
from ..protocol.records import ITEM_LIKES, ITEM_RATINGS, ITEM_STATISTICS
from ..tasks.collaborative.priors import STATISTICS_FILE, ItemCounts
from .federation import Federation
from .node_sums import exchanged_bytes, sum_over_nodes
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
    shapes = {ITEM_RATINGS: num_items, ITEM_LIKES: num_items}
    total, clients = sum_over_nodes(cfg, federation, ITEM_STATISTICS, shapes)
    exchanges = federation.recording.take()
    stats = cfg.item_statistics
    report = {
        "clients": clients,
        "noise_multiplier": stats.item_statistics_noise,
        "bound": stats.item_statistics_bound,
        "user_level_epsilon": user_level_epsilon(stats.item_statistics_noise, cfg.record_dp.target_delta)
        if stats.item_statistics_noise > 0
        else None,
        "delta": cfg.record_dp.target_delta,
        **exchanged_bytes(exchanges),
    }
    counts = ItemCounts(total[ITEM_RATINGS] * COUNT_UNIT, total[ITEM_LIKES] * COUNT_UNIT, _noise_std(cfg))
    return counts, report, privacy_lines(0, exchanges)


def _noise_std(cfg: FedRecConfig) -> float:
    """The std of the noise on each summed count (when every node asked answered)."""
    return cfg.item_statistics.item_statistics_noise * cfg.item_statistics.item_statistics_bound
