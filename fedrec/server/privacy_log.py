"""``privacy.jsonl``: what each client says of its record-level privacy, one line per
client and round (round 0: releases before training, e.g. item statistics), so that
anyone can recompute every epsilon from the results folder (``fedrec audit``).

A line holds the client's epsilon and its whole ledger (``(noise multiplier, sample
rate, steps)`` per release, as Opacus's accountants keep it) under an opaque client id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, FedRecConfig, read_config_file
from ..privacy.audit import ClientAudit, audit_ledgers
from ..privacy.ledger import unflatten
from ..protocol.records import DELTA, EPSILON, LEDGER
from .recording_grid import Exchange
from .results import PRIVACY_FILE, ResultsFolderError


def client_id(node_id: int) -> str:
    """An opaque id of a node: stable within a run, not its node id."""
    return hashlib.sha256(f"fedrec-client:{node_id}".encode()).hexdigest()[:12]


def privacy_lines(server_round: int, exchanges: list[Exchange]) -> list[dict[str, Any]]:
    """One line per node whose reply this round carried its ledger (its last such reply)."""
    replies = [e for e in exchanges if e.direction == "up" and e.error is None and LEDGER in e.metrics]
    latest = {e.node_id: e.metrics for e in replies}
    lines = []
    for node, metrics in sorted(latest.items(), key=lambda item: client_id(item[0])):
        line = {"round": server_round, "client": client_id(node), "epsilon": float(metrics[EPSILON])}  # type: ignore[arg-type]
        line["delta"] = float(metrics[DELTA])  # type: ignore[arg-type]
        line["ledger"] = [list(entry) for entry in unflatten(list(metrics[LEDGER]))]  # type: ignore[call-overload]
        lines.append(line)
    return lines


@dataclass(frozen=True)
class RunAudit:
    """A run's privacy, recomputed from its results folder."""

    config: FedRecConfig
    clients: list[ClientAudit]
    problems: list[str]  # every client's, and the run's own (the summary)


def audit_run(folder: str | Path) -> RunAudit:
    """Recompute every client's epsilon of the run in ``folder`` from ``privacy.jsonl``
    with Opacus (the run's accountant, delta and budget from ``config.toml``) and check
    ``summary.json``'s maximum against them.
    """
    folder = Path(folder).expanduser()
    cfg = FedRecConfig.from_mapping(read_config_file(folder / "config.toml"))
    dp = cfg.record_dp
    if not dp.dp:
        raise ConfigError(f"{folder} ran without record-level DP (dp = false): no epsilon to audit")
    path = folder / PRIVACY_FILE
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsFolderError(f"{path}: cannot be read ({err})") from None
    clients = audit_ledgers(lines, dp.accountant, dp.target_delta, dp.target_epsilon)
    problems = [f"client {c.client}: {problem}" for c in clients for problem in c.problems]
    summary = folder / "summary.json"
    if summary.exists() and clients:
        stated = json.loads(summary.read_text())["epsilon"]["max"]
        highest = max(c.recomputed for c in clients)
        if stated is None or abs(stated - highest) > 1e-9 * max(1.0, highest):
            problems.append(f"summary.json states max epsilon {stated}, the clients' ledgers give {highest:.6g}")
    if not clients:
        problems.append(f"{path} holds no client's privacy report")
    return RunAudit(cfg, clients, problems)
