"""Recomputing clients' record-level epsilon from the ledgers they reported: each
reported epsilon must follow from its ledger under the run's accountant, each ledger
must extend the client's earlier one, and no client may end above its budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .ledger import PersistentAccountant

BUDGET_TOLERANCE = 1.001  # the clients' own check: noise is calibrated to within 0.1 %


@dataclass(frozen=True)
class ClientAudit:
    """One client's reports, recomputed: its last epsilon and what did not check out."""

    client: str
    reports: int
    releases: int
    reported: float
    recomputed: float
    problems: tuple[str, ...]


def audit_ledgers(
    lines: Iterable[Mapping[str, Any]], mechanism: str, delta: float, target_epsilon: float
) -> list[ClientAudit]:
    """Audit every client of ``lines`` (``round``, ``client``, ``epsilon``, ``delta``,
    ``ledger``), in round order.
    """
    by_client: dict[str, list[Mapping[str, Any]]] = {}
    for line in sorted(lines, key=lambda line: line["round"]):
        by_client.setdefault(str(line["client"]), []).append(line)
    return [_audit_client(client, reports, mechanism, delta, target_epsilon) for client, reports in by_client.items()]


def _audit_client(
    client: str, reports: list[Mapping[str, Any]], mechanism: str, delta: float, target_epsilon: float
) -> ClientAudit:
    problems: list[str] = []
    previous: list[tuple[float, float, int]] = []
    recomputed = 0.0
    for line in reports:
        where = f"round {line['round']}"
        ledger = [(float(noise), float(rate), int(steps)) for noise, rate, steps in line["ledger"]]
        before, now = _steps_by_setting(previous), _steps_by_setting(ledger)
        if any(now.get(setting, 0) < steps for setting, steps in before.items()):
            problems.append(f"{where}: the ledger lost steps it reported before")
        if not math.isclose(float(line["delta"]), delta, rel_tol=1e-12):
            problems.append(f"{where}: delta {line['delta']} is not the run's {delta}")
        recomputed = PersistentAccountant(mechanism, ledger).epsilon(delta)
        if not math.isclose(recomputed, float(line["epsilon"]), rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"{where}: reported epsilon {line['epsilon']:.6g}, its ledger gives {recomputed:.6g}")
        previous = ledger
    if recomputed > target_epsilon * BUDGET_TOLERANCE:
        problems.append(f"epsilon {recomputed:.4f} > target-epsilon {target_epsilon:g}")
    last = reports[-1]
    return ClientAudit(client, len(reports), len(previous), float(last["epsilon"]), recomputed, tuple(problems))


def _steps_by_setting(ledger: list[tuple[float, float, int]]) -> dict[tuple[float, float], int]:
    """Steps per (noise multiplier, sample rate): Opacus merges a release into the last
    entry when their settings agree, so a ledger grows by entries or by steps.
    """
    steps: dict[tuple[float, float], int] = {}
    for noise, rate, count in ledger:
        steps[(noise, rate)] = steps.get((noise, rate), 0) + count
    return steps
