"""The ClientApp's training: one round of local DP-LoRA training on the node's private data.

The node's interactions never leave it: it receives the global adapter, trains it with
DP-SGD (Opacus) on its own examples, and replies with the adapter and metrics. A
round's privacy spend is written to the node's ledger before it trains (a node that
fails while training has still used its data), and a round that would exceed
``target-epsilon`` is declined with a reason.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, Context, Message

from ..config import FedRecConfig
from ..models.adapter import adapter_to_arrays
from ..models.scorer import Scorer
from ..models.wire import pad_to_rank
from ..privacy.ledger import PersistentAccountant
from ..privacy.record_level import PrivateTraining, decline_reason, plan_round
from ..protocol.records import (
    ARRAYS,
    CONFIG,
    DECLINED,
    DELTA,
    EPSILON,
    LORA_RANK,
    NOISE_MULTIPLIER,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    SAMPLE_RATE,
    SECONDS,
    SERVER_ROUND,
    STEPS,
    TRAIN_LOSS,
)
from ..protocol.replies import decline_reply, train_reply
from ..tasks.preference.dataset import FederatedData
from ..tasks.preference.examples import PreferenceExample
from ..tasks.preference.scoring import preference_loss
from ..tasks.training import LocalTraining, TrainResult, train_adapter
from .model import global_model
from .node import load_privacy_ledger, node_data, prefix_store, store_privacy_ledger


def train(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """One round of local training; see the module docstring."""
    started = time.perf_counter()
    data, partition_id = node_data(cfg, context)
    rank = cfg.model.client_lora_rank(partition_id)
    scorer = global_model(cfg, message, rank)
    examples = data.train_examples(partition_id)
    config = message.content.config_records[CONFIG]
    if not examples:
        return decline_reply(message, "no training examples on this node", {})
    local = LocalTraining(
        cfg.training,
        preference_loss,
        seed=cfg.federation.seed * 1_000_003 + int(config[SERVER_ROUND]) * 1009 + partition_id,
        proximal_mu=float(config.get(PROXIMAL_MU, 0.0)),
    )
    metrics: dict[str, Any] = {NUM_EXAMPLES: len(examples), DECLINED: 0, LORA_RANK: rank}
    if cfg.record_dp.dp:
        declined, privacy_metrics, result = _train_private(cfg, context, scorer, data, examples, local)
        if declined is not None:
            return decline_reply(message, declined, privacy_metrics)
        metrics |= privacy_metrics
    else:
        result = train_adapter(scorer, *_states_and_labels(scorer, data, examples, context), local)
        rate = min(1.0, cfg.training.batch_size / len(examples))
        metrics |= {EPSILON: math.inf, DELTA: 0.0, NOISE_MULTIPLIER: 0.0, SAMPLE_RATE: rate}
    metrics |= {TRAIN_LOSS: result.loss, STEPS: result.steps, SECONDS: time.perf_counter() - started}
    return train_reply(message, _released_adapter(cfg, scorer, message, rank), metrics)


def _states_and_labels(
    scorer: Scorer, data: FederatedData, examples: list[PreferenceExample], context: Context
) -> tuple[list[torch.Tensor], torch.Tensor]:
    states = scorer.prefix_states(scorer.encode(data.prompts(examples)), store=prefix_store(context))
    return states, torch.tensor([ex.label for ex in examples])


def _train_private(
    cfg: FedRecConfig,
    context: Context,
    scorer: Scorer,
    data: FederatedData,
    examples: list[PreferenceExample],
    local: LocalTraining,
) -> tuple[str | None, dict[str, float], TrainResult | None]:
    """DP-SGD within the node's budget: (decline reason or None, privacy metrics, result)."""
    dp = cfg.record_dp
    accountant = load_privacy_ledger(context, cfg)
    plan = plan_round(dp, cfg.planned_dp_rounds, len(examples), cfg.training.batch_size, cfg.training.local_epochs)
    reason = decline_reason(dp, plan, accountant)
    privacy_metrics = {
        EPSILON: accountant.epsilon(dp.target_delta),
        DELTA: dp.target_delta,
        NOISE_MULTIPLIER: plan.noise_multiplier,
        SAMPLE_RATE: plan.sample_rate,
    }
    if reason is not None:
        return reason, privacy_metrics, None
    # spend first: a node that fails while training has still used its data
    planned = (plan.noise_multiplier, plan.sample_rate, plan.steps)
    store_privacy_ledger(context, cfg, PersistentAccountant(accountant.mechanism, [*accountant.history, planned]))
    states, labels = _states_and_labels(scorer, data, examples, context)
    result = train_adapter(scorer, states, labels, local, PrivateTraining(plan, dp.max_grad_norm, accountant))
    store_privacy_ledger(context, cfg, accountant)
    privacy_metrics[EPSILON] = accountant.epsilon(dp.target_delta)
    return None, privacy_metrics, result


def _released_adapter(cfg: FedRecConfig, scorer: Scorer, message: Message, rank: int) -> ArrayRecord:
    """The trained adapter; a lower rank's B completed with the global columns when the
    update is masked (one length for every vector) or noised (noise on every column).
    """
    trained = adapter_to_arrays(scorer)
    if (cfg.secagg.secure_aggregation or cfg.client_dp.client_dp) and rank < cfg.model.global_lora_rank:
        full = {name: array.numpy() for name, array in message.content.array_records[ARRAYS].items()}
        padded = pad_to_rank({name: array.numpy() for name, array in trained.items()}, full, {rank})
        trained = ArrayRecord({name: Array(values) for name, values in padded.items()})
    return trained
