"""Round records: one line of ``rounds.jsonl`` per round from the messages it exchanged,
written (and printed) by :class:`RoundRecorder`, Flower's ``evaluate_fn``.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, MessageType, MetricRecord
from flwr.supercore import log

from ..config import FedRecConfig
from ..protocol.records import (
    DECLINED,
    DELTA,
    EPSILON,
    NEG_HIST,
    NUM_EXAMPLES,
    POS_HIST,
    SECAGG_CLIPPED,
    TRAIN_LOSS,
    UPDATE_NORM,
)
from ..protocol.secagg import STAGE_COLLECT, STAGE_SETUP, STAGE_SHARE_KEYS
from ..tasks.metrics import auc_from_histograms
from .federation import Federation
from .privacy_log import privacy_lines
from .recording_grid import Exchange
from .results import ResultsWriter

PREFERENCE_KEYS = ("auc_se", "uauc", "uauc_se", "uauc_users")  # beside auc and eval_loss
RANKING_KEYS = ("hr@10", "hr@10_se", "ndcg@10", "ndcg@10_se", "ranking_users", "ranks", "recall@20", "coverage@10")
# retrieve-then-rerank (rerank-top > 0) also reports the retriever alone on the same cases
RANKING_KEYS += tuple(f"retriever_{key}" for key in RANKING_KEYS if key != "ranking_users")
# Under secure aggregation a sampled client is first asked for keys (setup), for its
# shares (share-keys), or, when it shared them with the previous round's unmask, for its
# masked input; it reports its training in the clear beside that input.
_FIRST_STAGES = (None, STAGE_SETUP, STAGE_SHARE_KEYS, STAGE_COLLECT)


def resident_bytes() -> int | None:
    """Resident memory of the calling process (Linux ``/proc/self/statm``); None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def summarize_round(
    server_round: int,
    exchanges: list[Exchange],
    seconds: float,
    excluded: Mapping[int, str] | None = None,
    dropped: Collection[int] = (),
) -> dict[str, Any]:
    """One line of ``rounds.jsonl`` from the messages of a round; ``excluded``: nodes
    whose update the strategy left out, and why; ``dropped``: nodes that secure
    aggregation dropped after they replied (counted as failed).
    """
    excluded = excluded or {}
    train = [e for e in exchanges if e.message_type == MessageType.TRAIN]
    sampled = {e.node_id for e in train if e.direction == "down" and e.stage in _FIRST_STAGES}
    replies = [
        e for e in train if e.direction == "up" and e.stage in (None, STAGE_COLLECT) and e.node_id not in dropped
    ]
    answered = [e for e in replies if e.error is None and not e.metrics.get(DECLINED, 0)]
    trained = [e for e in answered if e.node_id not in excluded]
    declined = [e for e in replies if e.error is None and e.metrics.get(DECLINED, 0)]
    record: dict[str, Any] = {
        "round": server_round,
        "clients_sampled": len(sampled),
        "clients_ok": len(trained),
        "clients_declined": len(declined),
        "clients_excluded": len(answered) - len(trained),
        "clients_failed": len(sampled) - len(answered) - len(declined),
        **_training(trained),
        "bytes_down": sum(e.num_bytes for e in exchanges if e.direction == "down"),
        "bytes_up": sum(e.num_bytes for e in exchanges if e.direction == "up"),
        "seconds": seconds,
    }
    if excluded:
        record["excluded"] = {str(node): reason for node, reason in sorted(excluded.items())}
    silent = sorted(sampled - {e.node_id for e in train if e.direction == "up"})
    if silent:
        record["no_reply"] = silent  # within the round timeout
    record |= _by_stage(exchanges, trained)
    norms = [float(e.metrics[UPDATE_NORM]) for e in trained if UPDATE_NORM in e.metrics]
    if norms:
        record["update_norm_max"] = max(norms)
    evaluated = [
        e for e in exchanges if e.direction == "up" and e.message_type == MessageType.EVALUATE and e.error is None
    ]
    if evaluated:
        pos = [sum(h) for h in zip(*(e.metrics[POS_HIST] for e in evaluated), strict=True)]
        neg = [sum(h) for h in zip(*(e.metrics[NEG_HIST] for e in evaluated), strict=True)]
        record["auc_federated"] = auc_from_histograms(pos, neg)
    return record


def _training(trained: list[Exchange]) -> dict[str, Any]:
    """Loss, examples and record-level privacy of the clients that trained (under SecAgg+
    loss and examples stay on the nodes: see :meth:`RoundRecorder._secure_aggregation`).
    """
    reported = [e for e in trained if NUM_EXAMPLES in e.metrics and TRAIN_LOSS in e.metrics]
    examples = sum(int(e.metrics[NUM_EXAMPLES]) for e in reported)
    epsilons = [float(e.metrics[EPSILON]) for e in trained if EPSILON in e.metrics]
    loss = sum(float(e.metrics[TRAIN_LOSS]) * int(e.metrics[NUM_EXAMPLES]) for e in reported)
    return {
        "train_loss": loss / examples if examples else None,
        "train_examples": examples,
        "epsilon_max": max(epsilons) if epsilons else None,
        "epsilon_median": statistics.median(epsilons) if epsilons else None,
        "delta": max((float(e.metrics[DELTA]) for e in trained if DELTA in e.metrics), default=None),
    }


def _by_stage(exchanges: list[Exchange], trained: list[Exchange]) -> dict[str, Any]:
    """Bytes per secure-aggregation stage and the values clipped before masking."""
    stages = sorted({e.stage for e in exchanges if e.stage is not None})
    if not stages:
        return {}
    return {
        "bytes_by_stage": {
            stage: {
                direction: sum(e.num_bytes for e in exchanges if e.stage == stage and e.direction == direction)
                for direction in ("down", "up")
            }
            for stage in stages
        },
        "secagg_clipped": sum(int(e.metrics.get(SECAGG_CLIPPED, 0)) for e in trained),
    }


Evaluator = Callable[[ArrayRecord, bool], dict[str, float]]  # (adapter, rank too?) -> metrics
Checkpoint = Callable[[int, ArrayRecord, Mapping[int, float]], None]  # (round, adapter, clients' epsilons)


class RoundRecorder:
    """``evaluate_fn`` of ``Strategy.start``: called with the global adapter before
    round 1 and after every round, it evaluates centrally (if configured), turns the
    round's recorded messages into a ``rounds.jsonl`` line, prints progress and
    checkpoints.
    """

    def __init__(
        self,
        writer: ResultsWriter,
        federation: Federation,
        evaluator: Evaluator | None,
        cfg: FedRecConfig,
        start_round: int = 0,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.writer, self.federation, self.evaluator = writer, federation, evaluator
        self.num_rounds, self.delta = cfg.federation.num_server_rounds, cfg.record_dp.target_delta
        self.start_round, self.checkpoint = start_round, checkpoint
        self._failures_seen = 0
        self.node_epsilon: dict[int, float] = {}
        self._last = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Record round ``start_round + server_round`` (0: the initial adapter), then
        checkpoint. Flower counts a resumed run's rounds from 1: the round it resumes
        after was recorded before the interruption.
        """
        if server_round == 0 and self.start_round:
            return None
        server_round += self.start_round
        exchanges = self.federation.recording.take()
        self.writer.append_privacy(privacy_lines(server_round, exchanges))
        for e in exchanges:
            if e.direction == "up" and e.error is None and EPSILON in e.metrics:
                self.node_epsilon[e.node_id] = float(e.metrics[EPSILON])
        # ranking (100 candidates per user) is costly: the initial and the final adapter
        rank = server_round in (0, self.num_rounds)
        metrics = self.evaluator(arrays, rank) if self.evaluator is not None else {}
        now = time.perf_counter()
        secure = self.federation.secure if server_round > 0 else None
        excluded = self.federation.aggregation.excluded.get(server_round)
        record = summarize_round(
            server_round, exchanges, now - self._last, excluded, secure.last_dropped if secure else {}
        )
        self._last = now
        if secure is not None:
            record |= self._secure_aggregation(server_round, record)
        if record.get("no_reply"):
            log(logging.WARNING, "round %d: no reply in time from nodes %s", server_round, record["no_reply"])
        client_dp = self.federation.client_dp
        if client_dp is not None and server_round > 0:
            record["client_level_epsilon"] = client_dp.epsilon(self.delta)
            record["client_noise_multiplier"] = client_dp.last_noise_multiplier
        record |= {"auc": metrics.get("auc"), "eval_loss": metrics.get("loss"), "server_rss_bytes": resident_bytes()}
        record |= {k: metrics[k] for k in (*PREFERENCE_KEYS, *RANKING_KEYS) if k in metrics}
        self.writer.append_round(record)
        if self.checkpoint is not None:
            self.checkpoint(server_round, arrays, self.node_epsilon)
        print(progress_line(record, self.num_rounds), flush=True)
        shown = {k: v for k, v in metrics.items() if v is not None and not k.endswith("ranks")}  # Flower logs them
        return MetricRecord(shown) if shown else None

    def _secure_aggregation(self, server_round: int, record: Mapping[str, Any]) -> dict[str, Any]:
        """The round's SecAgg+ failure (None: it completed) and dropped nodes."""
        secure = self.federation.secure
        assert secure is not None
        failures = secure.failures[self._failures_seen :]
        self._failures_seen = len(secure.failures)
        fields: dict[str, Any] = {"secagg_failure": failures[-1][1] if failures else None}
        totals = secure.last_totals  # the unmasked sum's: the nodes sent no loss or example count in the clear
        fields |= {"train_loss": totals.get(TRAIN_LOSS), "train_examples": totals.get("train_examples")}
        if secure.last_dropped:
            fields["secagg_dropped"] = {str(n): why for n, why in sorted(secure.last_dropped.items())}
        if record.get("secagg_clipped"):
            log(
                logging.WARNING,
                "round %d: %d update values exceeded clipping-range and were clipped before secure aggregation",
                server_round,
                record["secagg_clipped"],
            )
        return fields


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def progress_line(record: Mapping[str, Any], num_rounds: int) -> str:
    """A one-line report of a finished round (record-level epsilon: the clients' maximum,
    inf without DP-SGD; client-level, when on, beside it).
    """
    client_level = record.get("client_level_epsilon")
    privacy = f"eps max {_fmt(record.get('epsilon_max'), '.2f')}"
    if client_level is not None:
        privacy += f"  client-level eps {client_level:.2f}"
    return (
        f"[fedrec] round {record['round']}/{num_rounds}  auc {_fmt(record.get('auc'), '.4f')}  "
        f"loss {_fmt(record.get('train_loss'), '.4f')}  {privacy}  "
        f"clients ok/declined/excluded/failed {record['clients_ok']}/{record['clients_declined']}/"
        f"{record['clients_excluded']}/{record['clients_failed']}  "
        f"bytes up {record['bytes_up']:,} down {record['bytes_down']:,}  {record['seconds']:.1f}s"
    )
