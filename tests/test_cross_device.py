"""Cross-device federation: every user a client, Poisson-sampled each round, SecAgg+ and
user-level DP (a real Flower simulation of 50 per-user clients).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedrec.config import resolve_config
from fedrec.models.item_tables import ITEM_BIASES, ITEM_EMBEDDINGS
from fedrec.protocol.records import ITEM_LIKES, ITEM_RATINGS
from fedrec.protocol.secagg import CLEAR_METRICS
from tests.conftest import run_configured

USERS, RATE, ROUNDS = 50, 0.2, 3
OVERRIDES = {
    "recommender": "mf",
    "mf-dim": 8,
    "partitioner": "user",
    "max-users": USERS,
    "num-clients": USERS,
    "fraction-train": RATE,
    "client-sampling": "poisson",
    "secure-aggregation": True,
    "client-dp": True,
    "client-dp-noise": "distributed",
    "client-dp-clip": 0.5,
    "client-dp-noise-multiplier": 1.0,
    "dp": False,  # user-level DP only
    "mf-fold-in": True,  # each client fits its user's embedding before its BPR step
    "item-statistics": True,  # one user-level release before round 1, composed into the user-level epsilon
    "item-statistics-noise": 4.0,
    "mf-popularity-weight": 0.5,
    "mf-like-rate-weight": 1.0,
    "num-server-rounds": ROUNDS,
    "ranking-users": 0,
}


@pytest.fixture(scope="module")
def per_user_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cross-device")
    overrides = {**OVERRIDES, "out": str(folder / "run"), "client-state-dir": str(folder / "nodes")}
    cfg = resolve_config("smoke", overrides=overrides)
    run_configured(cfg, "tests.test_collaborative:logged_client_app", folder / "flower")
    rounds = [json.loads(line) for line in (folder / "run" / "rounds.jsonl").read_text().splitlines()]
    return cfg, folder, rounds


def test_per_user_clients_are_poisson_sampled_and_user_level_epsilon_is_the_subsampled_gaussians(per_user_run):
    cfg, folder, rounds = per_user_run
    sampled = [r["clients_sampled"] for r in rounds[1:]]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert len(set(sampled)) > 1 or sampled[0] != RATE * USERS  # independent coins, not a fixed count
    assert all(r["clients_ok"] == r["clients_sampled"] and r["secagg_failure"] is None for r in rounds[1:])
    orders = RDPAccountant.DEFAULT_ALPHAS
    delta = cfg.record_dp.target_delta
    for r in rounds[1:]:  # no drop-outs: every round's noise is the full multiplier
        assert r["client_noise_multiplier"] == pytest.approx(1.0)
        rdp = compute_rdp(q=RATE, noise_multiplier=1.0, steps=r["round"], orders=orders)
        assert r["client_level_epsilon"] == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["client_dp"]["epsilon"] == pytest.approx(rounds[-1]["client_level_epsilon"])
    # the whole run: the item statistics' Gaussian (multiplier 4, once) and the rounds, composed in RDP
    rdp = compute_rdp(q=1.0, noise_multiplier=4.0, steps=1, orders=orders)
    rdp = rdp + compute_rdp(q=RATE, noise_multiplier=1.0, steps=ROUNDS, orders=orders)
    composed = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]
    assert summary["client_dp"]["user_level_epsilon"] == pytest.approx(composed)
    assert summary["client_dp"]["user_level_epsilon"] > summary["client_dp"]["epsilon"]


def test_no_message_carries_a_user_embedding_or_a_users_interactions(per_user_run):
    _, folder, rounds = per_user_run
    entries = [json.loads(p.read_text()) for p in (folder / "run" / "client-messages").glob("*.json")]
    trained = [e for e in entries if any(name == ITEM_EMBEDDINGS for name, _ in e["down"])]
    assert len(trained) == sum(r["clients_ok"] for r in rounds[1:])
    for partition in {e["partition"] for e in trained}:  # one user each; its embedding stayed on its node
        stored = np.load(folder / "nodes" / f"partition-{partition}" / "user-embeddings.npy")
        assert stored.shape == (1, 8)
    tables = {ITEM_EMBEDDINGS, ITEM_BIASES}
    statistics = [e for e in entries if {name for name, _ in e["down"]} == {ITEM_RATINGS, ITEM_LIKES}]
    assert len(statistics) == USERS  # every user answered the item-statistics request once, masked
    for entry in statistics:
        assert {name for name, _ in entry["up"]} <= {ITEM_RATINGS, ITEM_LIKES, "__weight__", "__metrics__"}
    for entry in (e for e in entries if e not in statistics):
        assert {name for name, _ in entry["down"]} <= tables, entry  # the global item tables, nothing else
        # up: the item tables' masked update, the masked weight and metrics (the node's outermost mod logs
        # what leaves it), never the user's embedding (shape [1, 8]) or a record of its interactions
        assert {name for name, _ in entry["up"]} <= tables | {"__weight__", "__metrics__"}, entry
        assert all(shape != [1, 8] for _, shape in entry["up"]), entry
        assert set(entry["up_metrics"]) <= CLEAR_METRICS, entry["up_metrics"]


def test_server_memory_does_not_grow_with_rounds(per_user_run):
    _, _, rounds = per_user_run
    resident = [r["server_rss_bytes"] for r in rounds]
    assert all(isinstance(b, int) and b > 0 for b in resident)
    assert max(resident[2:]) <= resident[1] + 32 * 2**20  # later rounds hold what round 1 did (32 MiB slack)
