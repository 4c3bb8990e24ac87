"""The ClientApp's answer to an item-statistics request: its users' scaled rating and
like indicators summed per item, plus its share of the Gaussian noise (see
:mod:`fedrec.privacy.item_statistics`). The noise comes from the operating system's
random source, and the release is written to the node's ledger before it is sent.
"""

from __future__ import annotations

import random

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from ..config import FedRecConfig
from ..models.item_tables import catalog_order
from ..privacy.item_statistics import COUNT_UNIT, noise_share, record_level_entry, user_contributions
from ..protocol.records import (
    CLIENT_DP_WEIGHT,
    CONFIG,
    DECLINED,
    ITEM_LIKES,
    ITEM_RATINGS,
    NUM_EXAMPLES,
    STATISTICS_CLIENTS,
)
from ..protocol.replies import decline_reply, train_reply
from .budget import ledger_metrics, spend_release
from .node import node_data


def answer_item_statistics(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """Reply the node's noised item counts (in thousands), weight 1 each."""
    data, partition_id = node_data(cfg, context)
    items = catalog_order(data.central.data.items["item"])
    stats = cfg.item_statistics
    counts = user_contributions(
        data.train_interactions(partition_id), cfg.data.like_threshold, items, stats.item_statistics_bound
    )
    privacy: dict[str, float | list[float]] = {}
    if stats.item_statistics_noise > 0:
        if cfg.record_dp.dp:
            entry = record_level_entry(stats.item_statistics_noise, stats.item_statistics_bound)
            spent = spend_release(context, cfg, entry, "the item statistics")
            if isinstance(spent, str):
                return decline_reply(message, spent, {})
            privacy = ledger_metrics(spent, cfg.record_dp.target_delta)
        clients = int(message.content.config_records[CONFIG][STATISTICS_CLIENTS])
        std = noise_share(stats.item_statistics_noise, stats.item_statistics_bound, clients)
        source = random.SystemRandom()
        counts = tuple(values + np.array([source.gauss(0.0, std) for _ in values]) for values in counts)
    arrays = {
        name: Array((values / COUNT_UNIT).astype(np.float32))
        for name, values in zip((ITEM_RATINGS, ITEM_LIKES), counts, strict=True)
    }
    return train_reply(message, ArrayRecord(arrays), {NUM_EXAMPLES: 1, CLIENT_DP_WEIGHT: 1, DECLINED: 0, **privacy})
