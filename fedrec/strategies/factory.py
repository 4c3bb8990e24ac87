"""The strategy a configuration names (config key ``strategy``): one builder per name
of :data:`fedrec.config.STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from ..config import STRATEGIES, AggregationConfig, FedRecConfig
from ..tasks.preference.evaluation import pooled_evaluation_metrics
from .fedavg import FedAvgLoRA, FFALoRA
from .fedprox import FedProxLoRA
from .server_optimizers import FedAdamLoRA, FedAvgMLoRA, FedYogiLoRA


def _adaptive(agg: AggregationConfig) -> dict[str, float]:
    keys = {"beta_1": agg.server_beta1, "beta_2": agg.server_beta2, "tau": agg.server_tau}
    return keys | ({"eta": agg.server_learning_rate} if agg.server_learning_rate else {})


def _momentum(agg: AggregationConfig) -> dict[str, float]:
    keys = {"server_momentum": agg.server_momentum}
    return keys | ({"server_learning_rate": agg.server_learning_rate} if agg.server_learning_rate else {})


BUILDERS: dict[str, Callable[[AggregationConfig, dict[str, Any]], Strategy]] = {
    "fedavg": lambda agg, common: FedAvgLoRA(**common),
    "ffa-lora": lambda agg, common: FFALoRA(**common),
    "fedadam": lambda agg, common: FedAdamLoRA(**common, **_adaptive(agg)),
    "fedyogi": lambda agg, common: FedYogiLoRA(**common, **_adaptive(agg)),
    "fedavgm": lambda agg, common: FedAvgMLoRA(**common, **_momentum(agg)),
    "fedprox": lambda agg, common: FedProxLoRA(**common, proximal_mu=agg.proximal_mu),
}
assert tuple(BUILDERS) == STRATEGIES, "every configurable strategy has one builder"


def scalar_train_metrics(contents: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """Flower's weighted mean of the replies' scalar metrics; per-client lists (a node's
    privacy ledger, whose length differs between nodes) are not averaged.
    """
    scalars = [
        RecordDict(
            {
                name: MetricRecord({k: v for k, v in record.items() if not isinstance(v, list)})
                for name, record in content.metric_records.items()
            }
        )
        for content in contents
    ]
    return aggregate_metricrecords(scalars, weighting_metric_name)


def build_strategy(cfg: FedRecConfig) -> Strategy:
    """The configured strategy, with its sampling and server-optimizer keys."""
    common: dict[str, Any] = {
        # Poisson sampling (fedrec.privacy.client_level.sampling) draws from every node
        "fraction_train": 1.0 if cfg.federation.client_sampling == "poisson" else cfg.federation.fraction_train,
        "fraction_evaluate": cfg.federation.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.federation.num_clients,
        "client_ranks": cfg.model.client_lora_ranks,
        "max_weight": cfg.secagg.max_weight,
        "train_metrics_aggr_fn": scalar_train_metrics,
        "evaluate_metrics_aggr_fn": pooled_evaluation_metrics,
    }
    return BUILDERS[cfg.aggregation.strategy](cfg.aggregation, common)
