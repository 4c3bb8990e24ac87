"""What the fedrec ``ClientApp`` does with a message: local DP-LoRA training and
evaluation on the node's private data.

The node's interactions never leave it: it receives the global adapter, trains it
with DP-SGD (Opacus) on its own examples, and replies with the adapter and metrics.
Its privacy ledger lives in ``context.state`` so epsilon composes across rounds, and,
when the node config sets ``state-dir``, in a file there, so that a restarted node
continues its budget; a round's spend is written before it trains. A round that would
exceed ``target-epsilon`` is declined with a reason. With ``state-dir`` the node also
keeps its prompts' frozen-prefix states in ``state-dir/prefix-cache`` (a cache: a
deployed node runs every message in a fresh process).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from ..config import FedRecConfig
from ..data.examples import PreferenceExample
from ..data.federation import FederatedData, load_federated_data, load_node_data
from ..metrics import roc_auc, score_histograms
from ..models.adapter import adapter_to_arrays, frozen_a_fingerprint, load_adapter_arrays, pad_to_rank
from ..models.prefix_store import PrefixStore
from ..models.scorer import PreferenceScorer
from ..privacy.accountant import PersistentAccountant, load_ledger, save_ledger
from ..privacy.dp import decline_reason, plan_round
from ..settings import data_settings, dp_settings, scorer_for, train_settings
from .train import PrivateTraining, train_adapter

PRIVACY_STATE_KEY = "privacy"
DATA_PATH_KEY = "data-path"  # node config: the node's own interactions file
STATE_DIR_KEY = "state-dir"  # node config: a folder on the node's disk (ledger, prefix cache)
LEDGER_FILE = "privacy-ledger.json"
PREFIX_CACHE_DIR = "prefix-cache"


def node_data(cfg: FedRecConfig, context: Context) -> tuple[FederatedData, int]:
    """Dataset view and partition id of the node, from its node config: ``data-path``
    (its own interactions file), else ``partition-id`` of ``num-partitions`` (trials).
    """
    data_path = context.node_config.get(DATA_PATH_KEY)
    if data_path:
        return load_node_data(data_settings(cfg), str(data_path)), 0
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(f"node config lacks {err}; set data-path, or partition-id and num-partitions") from None
    return load_federated_data(data_settings(cfg), num_partitions), partition_id


def ledger_path(context: Context, cfg: FedRecConfig) -> Path | None:
    """The node's ledger file: in its node config's ``state-dir``, else (simulation) in
    ``client-state-dir/partition-<id>``; None: ``context.state`` only.
    """
    folder = context.node_config.get(STATE_DIR_KEY)
    if folder:
        return Path(str(folder)).expanduser() / LEDGER_FILE
    if cfg.client_state_dir:
        partition = int(context.node_config.get("partition-id", context.node_id))
        return Path(cfg.client_state_dir).expanduser() / f"partition-{partition}" / LEDGER_FILE
    return None


def load_privacy_ledger(context: Context, cfg: FedRecConfig, mechanism: str) -> PersistentAccountant:
    """The node's ledger: from its file when it has one, else from ``context.state``."""
    path = ledger_path(context, cfg)
    if path is not None:
        return load_ledger(path, mechanism)
    return PersistentAccountant.from_record(context.state.config_records.get(PRIVACY_STATE_KEY), mechanism)


def store_privacy_ledger(context: Context, cfg: FedRecConfig, accountant: PersistentAccountant) -> None:
    """Keep the ledger in ``context.state`` and, when configured, in its file (atomically)."""
    context.state[PRIVACY_STATE_KEY] = accountant.to_record()
    path = ledger_path(context, cfg)
    if path is not None:
        save_ledger(path, accountant)


def prefix_store(context: Context) -> PrefixStore | None:
    """The node's on-disk prefix cache: ``state-dir/prefix-cache`` when it has a state-dir."""
    folder = context.node_config.get(STATE_DIR_KEY)
    return PrefixStore(Path(str(folder)) / PREFIX_CACHE_DIR) if folder else None


def _states_and_labels(
    scorer: PreferenceScorer, data: FederatedData, examples: list[PreferenceExample], store: PrefixStore | None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    states = scorer.prefix_states(scorer.encode(data.prompts(examples)), store=store)
    return states, torch.tensor([ex.label for ex in examples])


def _check_backbone(message: Message, scorer: PreferenceScorer) -> None:
    config = message.content.config_records["config"]
    expected = config.get("backbone-fingerprint")
    if expected is not None and expected != scorer.fingerprint:
        raise ValueError(
            f"backbone mismatch: the server's {expected}, this node's {scorer.fingerprint} ({scorer.backbone_name})"
        )
    frozen_a = config.get("lora-a-fingerprint")
    if frozen_a is not None:
        rows = int(config["lora-a-rows"])
        if frozen_a != frozen_a_fingerprint(scorer, rows):
            raise ValueError(
                "the frozen LoRA A differs from the server's (seed, rank or random generator differ): "
                "FFA-LoRA needs the same A on every node"
            )


def train(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """One round of local training; see the module docstring."""
    started = time.perf_counter()
    data, partition_id = node_data(cfg, context)
    rank = cfg.client_lora_rank(partition_id)
    scorer = scorer_for(cfg, rank)
    _check_backbone(message, scorer)
    global_arrays = message.content.array_records["arrays"]
    load_adapter_arrays(scorer, global_arrays, "global adapter", rank if cfg.client_lora_ranks else None)
    examples = data.train_examples(partition_id)
    config = message.content.config_records["config"]
    server_round = int(config["server-round"])
    if not examples:
        return _declined(message, "no training examples on this node", {})
    settings = train_settings(
        cfg,
        seed=cfg.seed * 1_000_003 + server_round * 1009 + partition_id,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    metrics: dict[str, Any] = {"num-examples": len(examples), "declined": 0, "lora-rank": rank}
    if cfg.dp:
        privacy = dp_settings(cfg)
        accountant = load_privacy_ledger(context, cfg, privacy.accountant)
        plan = plan_round(privacy, len(examples), cfg.batch_size, cfg.local_epochs)
        reason = decline_reason(privacy, plan, accountant)
        privacy_metrics = {
            "epsilon": accountant.epsilon(privacy.target_delta),
            "delta": privacy.target_delta,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
        }
        if reason is not None:
            return _declined(message, reason, privacy_metrics)
        # spend first: a node that fails while training has still used its data
        planned = (plan.noise_multiplier, plan.sample_rate, plan.steps)
        store_privacy_ledger(context, cfg, PersistentAccountant(accountant.mechanism, [*accountant.history, planned]))
        states, labels = _states_and_labels(scorer, data, examples, prefix_store(context))
        result = train_adapter(scorer, states, labels, settings, PrivateTraining(plan, cfg.max_grad_norm, accountant))
        store_privacy_ledger(context, cfg, accountant)
        privacy_metrics["epsilon"] = accountant.epsilon(privacy.target_delta)
        metrics |= privacy_metrics
    else:
        states, labels = _states_and_labels(scorer, data, examples, prefix_store(context))
        result = train_adapter(scorer, states, labels, settings)
        metrics |= {
            "epsilon": math.inf,
            "delta": 0.0,
            "noise_multiplier": 0.0,
            "sample_rate": min(1.0, cfg.batch_size / len(examples)),
        }
    metrics |= {"train_loss": result.loss, "steps": result.steps, "seconds": time.perf_counter() - started}
    trained = adapter_to_arrays(scorer)
    if (cfg.secure_aggregation or cfg.client_dp) and rank < cfg.global_lora_rank:
        # masked vectors must have one length, and client-level DP noise must cover
        # every column: complete B with the global columns
        full = {name: array.numpy() for name, array in global_arrays.items()}
        padded = pad_to_rank({name: array.numpy() for name, array in trained.items()}, full, {rank})
        trained = ArrayRecord({name: Array(values) for name, values in padded.items()})
    content = RecordDict({"arrays": trained, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=message)


def _declined(message: Message, reason: str, privacy_metrics: Mapping[str, float]) -> Message:
    """A reply that trains nothing: no adapter, ``declined = 1`` and the reason."""
    metrics = {"num-examples": 0, "declined": 1, **privacy_metrics}
    content = RecordDict({"metrics": MetricRecord(metrics), "decline": ConfigRecord({"reason": reason})})
    return Message(content=content, reply_to=message)


def evaluate(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """Score the node's held-out interactions with the global adapter.

    Replies with the local AUC (NaN when one class only), the loss, and score
    histograms per label from which the server computes the pooled AUC.
    """
    scorer = scorer_for(cfg)  # the global adapter, at the global rank
    _check_backbone(message, scorer)
    load_adapter_arrays(scorer, message.content.array_records["arrays"], "global adapter")
    data, partition_id = node_data(cfg, context)
    examples = data.test_examples(partition_id)
    scores = scorer.score(
        scorer.encode(data.prompts(examples)), batch_size=cfg.physical_batch_size, store=prefix_store(context)
    )
    labels = np.array([ex.label for ex in examples])
    pos, neg = score_histograms(labels, scores.numpy())
    loss = (
        F.binary_cross_entropy_with_logits(scores, torch.tensor(labels, dtype=torch.float32))
        if len(labels)
        else torch.tensor(0.0)
    )
    metrics = {
        "num-examples": len(examples),
        "auc": roc_auc(labels, scores.numpy()),
        "loss": float(loss),
        "pos-hist": pos,
        "neg-hist": neg,
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)
