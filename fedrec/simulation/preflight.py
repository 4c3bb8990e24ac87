"""Checks of a run's inputs before anything is written or started: the results folder,
the data (loaded, validated, split and partitioned as the clients will do it) and the
item tables it reads. Each failure is one error that names the problem and where.
"""

from __future__ import annotations

from pathlib import Path

from ..client.node import LEDGER_FILE
from ..config import ConfigError, FedRecConfig
from ..models.item_tables import ITEM_EMBEDDINGS, read_item_tables
from ..privacy.item_cooccurrence import record_level_entry
from ..privacy.ledger import PersistentAccountant
from ..server.checkpoint import read_checkpoint
from ..server.results import check_fresh, check_resumable
from ..tasks.collaborative.item_item import ITEM_WEIGHTS, Recency, dislike_weight_of
from ..tasks.preference.dataset import FederatedData, load_federated_data


def preflight(cfg: FedRecConfig) -> FederatedData:
    """Check ``cfg``'s results folder, data and item tables; returns the partitioned
    data. Raises ``ResultsFolderError``, ``CheckpointError``, ``DataError`` or
    ``ConfigError``.
    """
    out = Path(cfg.server.out)
    if cfg.server.resume:
        check_resumable(out, cfg.to_run_config())
        read_checkpoint(out)
    else:
        check_fresh(out)
    data = load_federated_data(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, cfg.federation.num_clients)
    if cfg.collaborative.item_tables:
        _check_item_tables(Path(cfg.collaborative.item_tables), cfg, len(data.central.data.items))
    if cfg.model.recommender == "ease" and cfg.record_dp.dp:
        _check_cooccurrence_budget(cfg)
    return data


def _check_cooccurrence_budget(cfg: FedRecConfig) -> None:
    """The item-item model's one release fits in ``target-epsilon`` (else every node would decline it)."""
    dp, noise = cfg.record_dp, cfg.item_item.ease_noise
    spent = PersistentAccountant(dp.accountant, [record_level_entry(noise)]).epsilon(dp.target_delta)
    if spent > dp.target_epsilon:
        raise ConfigError(
            f"ease-noise {noise:g} spends epsilon {spent:.3f} at delta {dp.target_delta:g}, more than "
            f"target-epsilon {dp.target_epsilon:g}: raise ease-noise (or target-epsilon)"
        )


def start_up_warnings(cfg: FedRecConfig) -> list[str]:
    """Settings that are valid but make a run fragile or mostly idle, each with the reason."""
    found = []
    secagg = cfg.secagg
    if secagg.secure_aggregation and secagg.reconstruction_threshold == secagg.num_shares:
        found.append(
            f"reconstruction-threshold = num-shares = {secagg.num_shares}: secure aggregation tolerates no drop-out "
            "(one node that leaves fails the round of its neighbours)"
        )
    federation = cfg.federation
    expected = federation.fraction_train * federation.num_clients
    if federation.client_sampling == "poisson" and expected < 1:
        found.append(
            f"client-sampling = 'poisson' expects {expected:.2f} clients per round (fraction-train x num-clients): "
            f"{(1 - federation.fraction_train) ** federation.num_clients:.0%} of the rounds train nobody"
        )
    found.extend(_spent_state_warning(cfg))
    return found


def _spent_state_warning(cfg: FedRecConfig) -> list[str]:
    """A new run whose ``client-state-dir`` already holds nodes' ledgers (e.g. a config
    copied from an earlier run): its nodes continue those budgets.
    """
    state_dir = cfg.server.client_state_dir
    if not state_dir or cfg.server.resume:
        return []
    ledgers = list(Path(state_dir).expanduser().glob(f"partition-*/{LEDGER_FILE}"))
    if not ledgers:
        return []
    return [
        f"client-state-dir {state_dir} already holds {len(ledgers)} nodes' privacy ledgers (an earlier run's?): "
        "those nodes continue their budgets and decline once spent; set another client-state-dir to start fresh"
    ]


def _check_item_tables(path: Path, cfg: FedRecConfig, num_items: int) -> None:
    """``path`` holds an mf run's item embeddings for this catalog, ``mf-dim`` wide, or
    (not for a hybrid LLM) an ease run's item-item weights for it.
    """
    try:
        tables = read_item_tables(path)
    except ValueError as err:
        raise ConfigError(f"item-tables: {err}") from None
    if ITEM_WEIGHTS in tables and cfg.model.llm_input != "hybrid":
        if tables[ITEM_WEIGHTS].shape != (num_items, num_items):
            shape = tables[ITEM_WEIGHTS].shape
            raise ConfigError(
                f"item-tables: {path} holds item-item weights of shape {shape}, not {num_items} x {num_items}"
            )
        try:
            dislike_weight_of(tables, str(path))
            Recency.of(tables, str(path))
        except ValueError as err:
            raise ConfigError(f"item-tables: {err}") from None
        return
    if ITEM_EMBEDDINGS not in tables:
        raise ConfigError(f"item-tables: {path} has no '{ITEM_EMBEDDINGS}' array (not an mf run's item tables)")
    rows, width = tables[ITEM_EMBEDDINGS].shape
    dim = cfg.collaborative.mf_dim
    if width != dim:
        raise ConfigError(f"item-tables: {path} holds item embeddings of width {width}, but mf-dim is {dim}")
    if rows != num_items:
        raise ConfigError(f"item-tables: {path} holds {rows} items, but the dataset's catalog has {num_items}")
