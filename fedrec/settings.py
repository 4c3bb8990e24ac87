"""Settings objects of each component, derived from a :class:`FedRecConfig`."""

from __future__ import annotations

from dataclasses import fields

from .client.train import TrainSettings
from .config import FedRecConfig
from .data.federation import DataSettings
from .models.registry import shared_scorer
from .models.scorer import LoraSettings, PreferenceScorer
from .privacy.dp import DPSettings


def data_settings(cfg: FedRecConfig) -> DataSettings:
    """What decides the examples and the clients' user groups (same-named keys)."""
    return DataSettings(**{f.name: getattr(cfg, f.name) for f in fields(DataSettings)})


def lora_settings(cfg: FedRecConfig, rank: int | None = None) -> LoraSettings:
    """LoRA shape and placement; the server's initial adapter is drawn from ``seed``.

    ``rank`` below the global rank (heterogeneous ranks) keeps the global scale
    ``alpha / rank``, so a client's adapter is a slice of the global one.
    """
    global_rank = cfg.global_lora_rank
    rank = global_rank if rank is None else rank
    return LoraSettings(
        rank=rank,
        alpha=cfg.lora_alpha * rank / global_rank,
        dropout=cfg.lora_dropout,
        target_modules=tuple(cfg.lora_modules),
        top_layers=cfg.lora_layers,
        freeze_a=cfg.freeze_lora_a,
        seed=cfg.seed,
    )


def dp_settings(cfg: FedRecConfig) -> DPSettings:
    """Record-level DP of every client, calibrated over ``dp-planned-rounds`` rounds
    (all server rounds by default).
    """
    return DPSettings(
        noise_multiplier=cfg.noise_multiplier,
        target_epsilon=cfg.target_epsilon,
        target_delta=cfg.target_delta,
        max_grad_norm=cfg.max_grad_norm,
        accountant=cfg.accountant,
        planned_rounds=cfg.dp_planned_rounds or cfg.num_server_rounds,
    )


def train_settings(cfg: FedRecConfig, seed: int, proximal_mu: float = 0.0) -> TrainSettings:
    """Local optimisation of one client in one round."""
    return TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        physical_batch_size=cfg.physical_batch_size,
        learning_rate=cfg.learning_rate,
        proximal_mu=proximal_mu,
        seed=seed,
    )


def scorer_for(cfg: FedRecConfig, rank: int | None = None) -> PreferenceScorer:
    """The process-wide scorer (backbone + LoRA of ``rank``, default the global rank)."""
    return shared_scorer(cfg.backbone, lora_settings(cfg, rank), cfg.max_length, cfg.compute_dtype)
