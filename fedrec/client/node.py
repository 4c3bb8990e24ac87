"""A node's own things: its data (its interactions file, or its partition in a
simulation), its privacy ledger, its users' embeddings (the collaborative model) and
its cache of frozen-prefix states.

The ledger lives in ``context.state`` so epsilon composes across rounds and, when the
node config sets ``state-dir``, in a file there, so that a restarted node continues its
budget; the user embeddings are kept the same way. With ``state-dir`` the node also
keeps its prompts' frozen-prefix states in
``state-dir/prefix-cache`` (a cache: a deployed node runs every message in a fresh
process).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from ..config import FedRecConfig
from ..files import write_atomic
from ..models.prefix_store import PrefixStore
from ..privacy.ledger import PersistentAccountant, load_ledger, save_ledger
from ..tasks.preference.dataset import FederatedData, load_federated_data, load_node_data

PRIVACY_STATE_KEY = "privacy"
DATA_PATH_KEY = "data-path"  # node config: the node's own interactions file
STATE_DIR_KEY = "state-dir"  # node config: a folder on the node's disk (ledger, prefix cache)
LEDGER_FILE = "privacy-ledger.json"
USERS_STATE_KEY = "mf-users"
USERS_FILE = "user-embeddings.npy"
PREFIX_CACHE_DIR = "prefix-cache"


def node_data(cfg: FedRecConfig, context: Context) -> tuple[FederatedData, int]:
    """Dataset view and partition id of the node, from its node config: ``data-path``
    (its own interactions file), else ``partition-id`` of ``num-partitions`` (trials).
    """
    data_path = context.node_config.get(DATA_PATH_KEY)
    if data_path:
        return load_node_data(cfg.data, str(data_path)), 0
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(f"node config lacks {err}; set data-path, or partition-id and num-partitions") from None
    data = load_federated_data(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, num_partitions)
    return data, partition_id


def round_seed(cfg: FedRecConfig, server_round: int, partition_id: int) -> int:
    """The seed of a node's local training in a round (batches, negatives)."""
    return cfg.federation.seed * 1_000_003 + server_round * 1009 + partition_id


def state_path(context: Context, cfg: FedRecConfig, name: str) -> Path | None:
    """The node's file ``name``: in its node config's ``state-dir``, else (simulation) in
    ``client-state-dir/partition-<id>``; None: ``context.state`` only.
    """
    folder = context.node_config.get(STATE_DIR_KEY)
    if folder:
        return Path(str(folder)).expanduser() / name
    if cfg.server.client_state_dir:
        partition = int(context.node_config.get("partition-id", context.node_id))
        return Path(cfg.server.client_state_dir).expanduser() / f"partition-{partition}" / name
    return None


def ledger_path(context: Context, cfg: FedRecConfig) -> Path | None:
    """The node's ledger file (see :func:`state_path`)."""
    return state_path(context, cfg, LEDGER_FILE)


def load_privacy_ledger(context: Context, cfg: FedRecConfig) -> PersistentAccountant:
    """The node's ledger: from its file when it has one, else from ``context.state``."""
    mechanism = cfg.record_dp.accountant
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


def load_user_embeddings(context: Context, cfg: FedRecConfig) -> np.ndarray | None:
    """The node's user embeddings from its last round (None before its first)."""
    path = state_path(context, cfg, USERS_FILE)
    if path is not None:
        return np.load(path) if path.exists() else None
    record = context.state.array_records.get(USERS_STATE_KEY)
    return record[USERS_STATE_KEY].numpy() if record is not None else None


def store_user_embeddings(context: Context, cfg: FedRecConfig, embeddings: np.ndarray) -> None:
    """Keep the user embeddings in ``context.state`` and, when configured, in a file (atomically)."""
    context.state[USERS_STATE_KEY] = ArrayRecord({USERS_STATE_KEY: Array(embeddings)})
    path = state_path(context, cfg, USERS_FILE)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, embeddings)
        write_atomic(path, buffer.getvalue())
