"""``summary.json``: the run's final metrics, privacy, bytes and versions."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import torch

from ..config import FedRecConfig
from ..models.precision import resolve_compute_dtype, scoring_device
from ..privacy.client_level.strategy import ClientLevelDP
from ..privacy.ledger import PersistentAccountant
from .models import ServedModel
from .rounds import PREFERENCE_KEYS, RANKING_KEYS

PACKAGES = ("fedrec", "flwr", "torch", "transformers", "peft", "opacus")


def _metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "auc": record.get("auc"),
        "loss": record.get("eval_loss"),
        **{k: record[k] for k in (*PREFERENCE_KEYS, *RANKING_KEYS) if k in record},
    }


def build_summary(
    cfg: FedRecConfig,
    rounds: list[dict[str, Any]],
    node_epsilon: Mapping[int, float],
    model: ServedModel,
    eval_examples: int,
    seconds: float,
) -> dict[str, Any]:
    """The summary of a run from its round records and the clients' last epsilons."""
    first, last = rounds[0], rounds[-1]
    epsilons = list(node_epsilon.values())
    size = model.initial.count_bytes()
    facts = model.facts(size)
    up, down = sum(r["bytes_up"] for r in rounds), sum(r["bytes_down"] for r in rounds)
    dp = cfg.record_dp
    summary = {
        "rounds": len(rounds) - 1,
        "metrics": {**_metrics(last), "auc_federated": last.get("auc_federated")},
        "initial_metrics": _metrics(first),
        "eval_examples": eval_examples,
        "dp": dp.dp,
        "epsilon": {
            "max": max(epsilons) if epsilons else None,
            "median": statistics.median(epsilons) if epsilons else None,
            "target": dp.target_epsilon if dp.dp else None,
        },
        "delta": dp.target_delta if dp.dp else None,
        "bytes": {"up": up, "down": down, "total": up + down, "adapter": size, **facts.pop("bytes", {})},
        **facts,
        "seconds": seconds,
        "versions": {name: version(name) for name in PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "compute_dtype": _compute_dtype(cfg.model.compute_dtype),
    }
    if cfg.evaluation.ranking_users:
        summary["ranking_candidates"] = cfg.evaluation.ranking_negatives + 1
    tables = facts.get("item_tables")
    if tables is not None and dp.dp and epsilons and tables["epsilon_max"] is not None:
        summary["epsilon"]["composed"] = composed_with_item_tables(max(epsilons), dp.target_delta, tables)
    return summary


def _compute_dtype(name: str) -> str:
    """What ``compute-dtype`` meant on the server's device (``auto`` resolved), e.g. "float32"."""
    return str(resolve_compute_dtype(name, scoring_device())).removeprefix("torch.")


def composed_with_item_tables(epsilon: float, delta: float, tables: Mapping[str, Any]) -> dict[str, Any]:
    """The run's record-level guarantee composed with the one of the run that made its
    item tables (same clients' data): basic composition, epsilons and deltas add. Both
    are maxima over clients, so the sum bounds every client's total.
    """
    return {
        "max": epsilon + float(tables["epsilon_max"]),
        "delta": delta + float(tables["delta"] or 0.0),
        "rule": "basic composition: this run's max epsilon + the item tables' run's max epsilon",
    }


def client_dp_summary(cfg: FedRecConfig, client_dp: ClientLevelDP) -> dict[str, Any]:
    """The client-level guarantee of a run: epsilon at ``target-delta`` and its settings.
    With one client per user and noised item statistics, ``user_level_epsilon`` composes
    (RDP) the statistics' release with the client-level ones: the whole run's guarantee.
    """
    delta = cfg.record_dp.target_delta
    summary: dict[str, Any] = {
        "epsilon": client_dp.epsilon(delta),
        "delta": delta,
        "clip": cfg.client_dp.client_dp_clip,
        "noise_multiplier": cfg.client_dp.client_dp_noise_multiplier,
        "noise": cfg.client_dp.client_dp_noise,
        "releases": len(client_dp.accountant.history),
    }
    stats = cfg.item_statistics
    if cfg.data.partitioner == "user" and stats.item_statistics and stats.item_statistics_noise > 0:
        history = [(stats.item_statistics_noise, 1.0, 1), *client_dp.accountant.history]
        summary["user_level_epsilon"] = PersistentAccountant("rdp", history).epsilon(delta)
    return summary
