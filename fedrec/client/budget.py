"""A round of local training inside the node's record-level privacy budget, for any model.

With DP, the round is planned (noise, sampling rate, steps), declined with a reason if
it would exceed ``target-epsilon``, and its spend written to the node's ledger before
training starts (a node that fails while training has still used its data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Context

from ..config import FedRecConfig
from ..privacy.item_statistics import record_level_entry
from ..privacy.ledger import PersistentAccountant
from ..privacy.record_level import PrivateTraining, decline_reason, plan_round
from ..protocol.records import DELTA, EPSILON, LEDGER, NOISE_MULTIPLIER, SAMPLE_RATE
from ..tasks.training import TrainResult
from .node import load_privacy_ledger, store_privacy_ledger

LocalRun = Callable[[PrivateTraining | None], TrainResult]  # trains privately when given a PrivateTraining


@dataclass(frozen=True)
class BudgetedRound:
    """The decline reason (None: it trained), the round's privacy metrics and its result."""

    declined: str | None
    metrics: dict[str, float | list[float]]
    result: TrainResult | None = None


def releases_before_training(cfg: FedRecConfig) -> list[tuple[float, float, int]]:
    """Ledger entries of what the node releases before training (federated item statistics)."""
    stats = cfg.item_statistics
    if stats.item_statistics and stats.item_statistics_noise > 0:
        return [record_level_entry(stats.item_statistics_noise, stats.item_statistics_bound)]
    return []


def train_within_budget(
    cfg: FedRecConfig,
    context: Context,
    num_examples: int,
    batch_size: int,
    epochs: int,
    max_grad_norm: float,
    run: LocalRun,
) -> BudgetedRound:
    """Run ``run`` with DP-SGD (records clipped to ``max_grad_norm``) within the node's
    budget when ``dp`` is on, else plainly.
    """
    if not cfg.record_dp.dp:
        rate = min(1.0, batch_size / num_examples)
        metrics = {EPSILON: math.inf, DELTA: 0.0, NOISE_MULTIPLIER: 0.0, SAMPLE_RATE: rate}
        return BudgetedRound(None, metrics, run(None))
    dp = cfg.record_dp
    accountant = load_privacy_ledger(context, cfg)
    plan = plan_round(dp, cfg.planned_dp_rounds, num_examples, batch_size, epochs, releases_before_training(cfg))
    reason = decline_reason(dp, plan, accountant)
    metrics = {
        EPSILON: accountant.epsilon(dp.target_delta),
        DELTA: dp.target_delta,
        NOISE_MULTIPLIER: plan.noise_multiplier,
        SAMPLE_RATE: plan.sample_rate,
    }
    if reason is not None:
        return BudgetedRound(reason, metrics)
    planned = (plan.noise_multiplier, plan.sample_rate, plan.steps)
    store_privacy_ledger(context, cfg, PersistentAccountant(accountant.mechanism, [*accountant.history, planned]))
    result = run(PrivateTraining(plan, max_grad_norm, accountant, dp.secure_noise))
    store_privacy_ledger(context, cfg, accountant)
    return BudgetedRound(None, metrics | ledger_metrics(accountant, dp.target_delta), result)


def spend_release(
    context: Context, cfg: FedRecConfig, entry: tuple[float, float, int], what: str
) -> PersistentAccountant | str:
    """Write a release (one ledger ``entry``) to the node's ledger before it is sent, and
    return the ledger; or, leaving the ledger as it was, why it would exceed the budget.
    """
    dp = cfg.record_dp
    accountant = load_privacy_ledger(context, cfg)
    after = accountant.epsilon_after(*entry, dp.target_delta)
    if after > dp.target_epsilon:
        return f"privacy budget: {what} would reach epsilon {after:.3f} > target-epsilon {dp.target_epsilon:g}"
    released = PersistentAccountant(accountant.mechanism, [*accountant.history, entry])
    store_privacy_ledger(context, cfg, released)
    return released


def ledger_metrics(accountant: PersistentAccountant, delta: float) -> dict[str, float | list[float]]:
    """What a reply says of the node's privacy: its epsilon and its whole ledger, from
    which anyone can recompute that epsilon (``fedrec audit``).
    """
    return {EPSILON: accountant.epsilon(delta), DELTA: delta, LEDGER: accountant.flat()}
