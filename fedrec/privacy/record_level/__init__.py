"""Record-level DP: each client's DP-SGD with Opacus over its adapter, calibrated and
accounted per round in the client's persistent ledger (:mod:`fedrec.privacy.ledger`),
which the client keeps across rounds (see :mod:`fedrec.client.node`).
"""

from .dp_sgd import (
    PrivateTraining,
    RoundPlan,
    decline_reason,
    dp_sgd,
    group_grad_samples,
    physical_batches,
    plan_round,
    seed_dp_sgd,
)

__all__ = [
    "PrivateTraining",
    "RoundPlan",
    "decline_reason",
    "dp_sgd",
    "group_grad_samples",
    "physical_batches",
    "plan_round",
    "seed_dp_sgd",
]
