"""The strategy a configuration names (config key ``strategy``)."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import Strategy

from ..config import ConfigError, FedRecConfig
from .fedavg import FedAvgLoRA, FFALoRA
from .fedprox import FedProxLoRA
from .server_optimizers import FedAdamLoRA, FedAvgMLoRA, FedYogiLoRA


def build_strategy(cfg: FedRecConfig) -> Strategy:
    """The configured strategy, with its sampling and server-optimizer keys."""
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.num_clients,
        "client_ranks": cfg.client_lora_ranks,
        "max_weight": cfg.max_weight,
    }
    adaptive = {"beta_1": cfg.server_beta1, "beta_2": cfg.server_beta2, "tau": cfg.server_tau}
    if cfg.server_learning_rate:
        adaptive["eta"] = cfg.server_learning_rate
    if cfg.strategy == "fedavg":
        return FedAvgLoRA(**common)
    if cfg.strategy == "ffa-lora":
        return FFALoRA(**common)
    if cfg.strategy == "fedadam":
        return FedAdamLoRA(**common, **adaptive)
    if cfg.strategy == "fedyogi":
        return FedYogiLoRA(**common, **adaptive)
    if cfg.strategy == "fedavgm":
        momentum = {"server_momentum": cfg.server_momentum}
        if cfg.server_learning_rate:
            momentum["server_learning_rate"] = cfg.server_learning_rate
        return FedAvgMLoRA(**common, **momentum)
    if cfg.strategy == "fedprox":
        return FedProxLoRA(**common, proximal_mu=cfg.proximal_mu)
    raise ConfigError(f"unknown strategy '{cfg.strategy}'")
