"""The ClientApp's answer to a co-occurrence request (``recommender = 'ease'``): the
upper triangle of its users' scaled rated-items outer products summed, plus its share of
the Gaussian noise (see :mod:`fedrec.privacy.item_cooccurrence`). With DP the release is
written to the node's ledger before it is sent. The noise follows the run's seed and the
node's partition unless ``secure-noise``, then a generator seeded by the OS's CSPRNG.
"""

from __future__ import annotations

import secrets

import numpy as np
import pandas as pd
from flwr.app import Array, ArrayRecord, Context, Message

from ..config import FedRecConfig
from ..models.item_tables import catalog_order
from ..privacy.item_cooccurrence import cooccurrence, noise_share, record_level_entry
from ..privacy.item_statistics import COUNT_UNIT
from ..privacy.rated_items import interaction_vectors
from ..protocol.records import CLIENT_DP_WEIGHT, CONFIG, COOCCURRENCE, DECLINED, NUM_EXAMPLES, STATISTICS_CLIENTS
from ..protocol.replies import decline_reply, train_reply
from .budget import ledger_metrics, spend_release
from .node import node_data, round_seed


def noised_cooccurrence(
    cfg: FedRecConfig, train: pd.DataFrame, items: list[str], clients: int, seed: int
) -> np.ndarray:
    """The upper triangle of ``train``'s users' summed scaled outer products plus this
    node's share of the noise for ``clients`` nodes, drawn from ``seed`` (none when
    ``ease-noise`` is 0).
    """
    ease = cfg.item_item
    vectors = interaction_vectors(train, cfg.data.like_threshold, ease.ease_dislike_weight, items, ease.ease_bound)
    summed = cooccurrence(vectors)
    if ease.ease_noise > 0:
        std = noise_share(ease.ease_noise, ease.ease_bound, clients)
        summed = summed + np.random.default_rng(seed).normal(0.0, std, summed.shape)
    return summed


def answer_item_cooccurrence(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """Reply the node's noised co-occurrence sums (in thousands), weight 1."""
    data, partition_id = node_data(cfg, context)
    items = catalog_order(data.central.data.items["item"])
    noise = cfg.item_item.ease_noise
    privacy: dict[str, float | list[float]] = {}
    if cfg.record_dp.dp:
        spent = spend_release(context, cfg, record_level_entry(noise), "the co-occurrence of ratings")
        if isinstance(spent, str):
            return decline_reply(message, spent, {})
        privacy = ledger_metrics(spent, cfg.record_dp.target_delta)
    clients = int(message.content.config_records[CONFIG][STATISTICS_CLIENTS]) if noise > 0 else 1
    seed = secrets.randbits(128) if cfg.record_dp.secure_noise else round_seed(cfg, 0, partition_id)
    summed = noised_cooccurrence(cfg, data.train_interactions(partition_id), items, clients, seed)
    arrays = ArrayRecord({COOCCURRENCE: Array((summed / COUNT_UNIT).astype(np.float32))})
    return train_reply(message, arrays, {NUM_EXAMPLES: 1, CLIENT_DP_WEIGHT: 1, DECLINED: 0, **privacy})
