"""The ClientApp's training: one round of local DP-LoRA training on the node's private data.

The node's interactions never leave it: it receives the global adapter, trains it with
DP-SGD (Opacus) on its own examples, and replies with the adapter and metrics. A
round's privacy spend is written to the node's ledger before it trains (a node that
fails while training has still used its data), and a round that would exceed
``target-epsilon`` is declined with a reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, Context, Message

from ..config import FedRecConfig
from ..models.adapter import adapter_to_arrays
from ..models.packing import group_prefix_lengths
from ..models.scorer import Scorer
from ..models.wire import pad_to_rank
from ..privacy.record_level import PrivateTraining
from ..protocol.records import (
    ARRAYS,
    CONFIG,
    DECLINED,
    LORA_RANK,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    SECONDS,
    SERVER_ROUND,
    STEPS,
    TRAIN_LOSS,
)
from ..protocol.replies import decline_reply, train_reply
from ..tasks.collaborative.retriever import Retriever
from ..tasks.preference.dataset import FederatedData
from ..tasks.preference.examples import PreferenceExample
from ..tasks.preference.scoring import preference_loss
from ..tasks.preference.signals import node_retriever, node_signals
from ..tasks.ranking.training import ranking_groups, ranking_loss
from ..tasks.training import LocalTraining, Loss, TrainResult, train_adapter
from .budget import train_within_budget
from .model import global_model
from .node import node_data, prefix_store, round_seed


@dataclass(frozen=True)
class _Records:
    """What a round trains on: prompt rows (``group_size`` per record), one target per
    record, and the loss.
    """

    rows: list[PreferenceExample]
    targets: torch.Tensor
    loss: Loss
    group_size: int


def _records(cfg: FedRecConfig, data: FederatedData, partition_id: int, folded: Retriever | None) -> _Records:
    """Preference examples with their labels, or (``objective = 'ranking'``) each liked
    example's group with unrated negatives, drawn once per run (the run's seed; from the
    retriever's top ``train-negatives-pool`` with ``folded``, the item-tables retriever): the same prompts
    every round, so the frozen layers' states are computed once.
    """
    examples = data.train_examples(partition_id)
    if cfg.training.objective == "preference":
        return _Records(examples, torch.tensor([ex.label for ex in examples]), preference_loss, 1)
    catalog = data.central.data.items["item"].astype(str).tolist()
    negatives = cfg.training.train_negatives
    train = data.train_interactions(partition_id)
    groups = ranking_groups(
        examples, train, catalog, negatives, cfg.federation.seed, folded, cfg.training.train_negatives_pool
    )
    return _Records([ex for group in groups for ex in group], torch.zeros(len(groups)), ranking_loss, 1 + negatives)


def train(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """One round of local training; see the module docstring."""
    started = time.perf_counter()
    data, partition_id = node_data(cfg, context)
    rank = cfg.model.client_lora_rank(partition_id)
    scorer = global_model(cfg, message, rank)
    config = message.content.config_records[CONFIG]
    seed = round_seed(cfg, int(config[SERVER_ROUND]), partition_id)
    folded = None
    if cfg.model.llm_input == "hybrid" or cfg.training.train_negatives_pool:
        folded = node_retriever(cfg, data, partition_id)
    records = _records(cfg, data, partition_id, folded)
    if not len(records.targets):
        return _nothing_to_train(message, cfg)
    local = LocalTraining(
        cfg.training, records.loss, seed, float(config.get(PROXIMAL_MU, 0.0)), group_size=records.group_size
    )
    metrics: dict[str, Any] = {NUM_EXAMPLES: len(records.targets), DECLINED: 0, LORA_RANK: rank}
    signals = node_signals(cfg, data, partition_id, folded)
    rows = records.rows

    def run(private: PrivateTraining | None) -> TrainResult:
        tokens = scorer.encode(data.prompts(rows))
        states = scorer.prefix_states(tokens, store=prefix_store(context))
        packed = records.group_size > 1 and scorer.packs_groups
        shared = group_prefix_lengths(tokens, records.group_size) if packed else None
        return train_adapter(
            scorer, states, records.targets, local, private, None if signals is None else signals.of(rows), shared
        )

    training = cfg.training
    outcome = train_within_budget(
        cfg, context, len(records.targets), training.batch_size, training.local_epochs, cfg.record_dp.max_grad_norm, run
    )
    if outcome.declined is not None:
        return decline_reply(message, outcome.declined, outcome.metrics)
    assert outcome.result is not None
    metrics |= outcome.metrics
    metrics |= {TRAIN_LOSS: outcome.result.loss, STEPS: outcome.result.steps, SECONDS: time.perf_counter() - started}
    return train_reply(message, _released_adapter(cfg, scorer, message, rank), metrics)


def _nothing_to_train(message: Message, cfg: FedRecConfig) -> Message:
    """The decline of a node without anything to train on."""
    what = "liked training examples" if cfg.training.objective == "ranking" else "training examples"
    return decline_reply(message, f"no {what} on this node", {})


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
