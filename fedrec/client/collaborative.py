"""The ClientApp's training of the collaborative model (``recommender = 'mf'``).

The node receives the global item embeddings and biases, puts its users' embeddings
from its last round beside them (seeded ones in its first round), trains BPR on its
users' likes within its privacy budget, keeps the new user embeddings and replies
with the item tables only: a user's embedding never leaves the node.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import Array, ArrayRecord, Context, Message

from ..config import FedRecConfig
from ..models.collaborative import MatrixFactorization, initial_user_embeddings
from ..models.item_tables import catalog_order
from ..privacy.record_level import PrivateTraining
from ..protocol.records import ARRAYS, CONFIG, DECLINED, NUM_EXAMPLES, SECONDS, SERVER_ROUND, STEPS, TRAIN_LOSS
from ..protocol.replies import decline_reply, train_reply
from ..tasks.collaborative.likes import Likes, fold_in
from ..tasks.collaborative.training import BPRTraining, train_bpr
from ..tasks.training import TrainResult
from .budget import train_within_budget
from .node import load_user_embeddings, node_data, round_seed, store_user_embeddings


def train_collaborative(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """One round of local BPR training; see the module docstring."""
    started = time.perf_counter()
    data, partition_id = node_data(cfg, context)
    users = data.users(partition_id)
    items = catalog_order(data.central.data.items["item"])
    likes = Likes.of(data.train_interactions(partition_id), cfg.data.like_threshold, users, items)
    if not len(likes):
        return decline_reply(message, "no liked training interactions on this node", {})
    mf = cfg.collaborative
    model = MatrixFactorization(len(users), len(items), mf.mf_dim)
    arrays = message.content.array_records[ARRAYS]
    model.load_item_arrays({name: array.numpy() for name, array in arrays.items()}, "global item tables")
    stored = load_user_embeddings(context, cfg)
    seed = round_seed(cfg, int(message.content.config_records[CONFIG][SERVER_ROUND]), partition_id)
    if stored is None or stored.shape != (len(users), mf.mf_dim):
        stored = initial_user_embeddings(len(users), mf.mf_dim, cfg.federation.seed * 7919 + partition_id)
    model.set_users(stored)
    if mf.mf_fold_in:
        fold_in(model, likes)
    training = BPRTraining(mf.mf_learning_rate, mf.mf_batch_size, mf.mf_local_epochs, seed)

    def run(private: PrivateTraining | None) -> TrainResult:
        return train_bpr(model, likes, training, private)

    outcome = train_within_budget(
        cfg, context, len(likes), mf.mf_batch_size, mf.mf_local_epochs, mf.mf_max_grad_norm, run
    )
    if outcome.declined is not None:
        return decline_reply(message, outcome.declined, outcome.metrics)
    assert outcome.result is not None
    store_user_embeddings(context, cfg, model.user_array())
    metrics: dict[str, Any] = {NUM_EXAMPLES: len(likes), DECLINED: 0, **outcome.metrics}
    metrics |= {TRAIN_LOSS: outcome.result.loss, STEPS: outcome.result.steps, SECONDS: time.perf_counter() - started}
    items_out = ArrayRecord({name: Array(values) for name, values in model.item_arrays().items()})
    return train_reply(message, items_out, metrics)
