"""A node's own things: its data (its interactions file, or its partition in a
simulation), its privacy ledger and its cache of frozen-prefix states.

The ledger lives in ``context.state`` so epsilon composes across rounds and, when the
node config sets ``state-dir``, in a file there, so that a restarted node continues its
budget. With ``state-dir`` the node also keeps its prompts' frozen-prefix states in
``state-dir/prefix-cache`` (a cache: a deployed node runs every message in a fresh
process).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from ..config import FedRecConfig
from ..models.prefix_store import PrefixStore
from ..privacy.ledger import PersistentAccountant, load_ledger, save_ledger
from ..tasks.preference.dataset import FederatedData, load_federated_data, load_node_data

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
        return load_node_data(cfg.data, str(data_path)), 0
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(f"node config lacks {err}; set data-path, or partition-id and num-partitions") from None
    data = load_federated_data(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, num_partitions)
    return data, partition_id


def ledger_path(context: Context, cfg: FedRecConfig) -> Path | None:
    """The node's ledger file: in its node config's ``state-dir``, else (simulation) in
    ``client-state-dir/partition-<id>``; None: ``context.state`` only.
    """
    folder = context.node_config.get(STATE_DIR_KEY)
    if folder:
        return Path(str(folder)).expanduser() / LEDGER_FILE
    if cfg.server.client_state_dir:
        partition = int(context.node_config.get("partition-id", context.node_id))
        return Path(cfg.server.client_state_dir).expanduser() / f"partition-{partition}" / LEDGER_FILE
    return None


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
