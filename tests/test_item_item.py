"""The item-item model (``recommender = 'ease'``): the co-occurrence release, its
sensitivity and accounting, EASE's fit, and a federated run with SecAgg+ and DP.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord
from opacus.accountants import RDPAccountant

from fedrec.client.recommend import recommend
from fedrec.config import ConfigError, FedRecConfig, resolve_config
from fedrec.data.interactions import load_interaction_data
from fedrec.models.item_tables import catalog_order
from fedrec.privacy.item_cooccurrence import (
    cooccurrence,
    noise_share,
    record_sensitivity,
    symmetric,
    upper_triangle,
    user_level_epsilon,
    user_sensitivity,
)
from fedrec.privacy.rated_items import interaction_vectors
from fedrec.simulation.runner import SimulationError, simulate
from fedrec.tasks.collaborative.evaluation import ItemItemEvaluator
from fedrec.tasks.collaborative.item_item import DISLIKE_WEIGHT, ITEM_WEIGHTS, RECENCY, Recency, fit_ease
from fedrec.tasks.preference.dataset import load_federated_data, load_split
from tests.conftest import run_configured

EASE = {"recommender": "ease", "num-server-rounds": 0}


def test_interaction_vectors_hold_likes_at_one_and_dislikes_at_their_weight_scaled_to_the_bound():
    interactions = pd.DataFrame(
        {
            "user": ["a", "a", "a", "a", "b", "c"],
            "item": ["1", "2", "3", "4", "2", "1"],
            "rating": [5.0, 4.0, 1.0, 5.0, 5.0, 2.0],
        }
    )
    items = ["1", "2", "3", "4"]
    likes_only = interaction_vectors(interactions, 3.0, 0.0, items, bound=1.5)  # c, without likes, is left out
    assert np.allclose(likes_only, [[0.5 * np.sqrt(3)] * 2 + [0.0, 0.5 * np.sqrt(3)], [0.0, 1.0, 0.0, 0.0]])
    assert np.allclose(symmetric(cooccurrence(likes_only), 4), likes_only.T @ likes_only)
    vectors = interaction_vectors(interactions, 3.0, 0.5, items, bound=1.5)
    a = np.array([1.0, 1.0, 0.5, 1.0])
    assert np.allclose(vectors, [a * 1.5 / np.linalg.norm(a), [0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])


def test_recency_weighs_each_users_ratings_by_how_many_of_theirs_follow_in_time():
    interactions = pd.DataFrame(
        {
            "user": ["a", "b", "a", "a", "b", "a"],
            "item": ["1", "1", "2", "3", "2", "4"],
            "rating": [5.0] * 6,
            "timestamp": [30, 5, 10, 30, 7, 20],  # a: 2 (t 10), 4 (t 20), then 1 and 3 tied at t 30 in row order
        }
    )
    ages = np.array([1, 1, 3, 0, 0, 2])
    recency = Recency(half_life=2.0, floor=0.25)
    assert np.allclose(recency.weights(interactions), 0.25 + 0.75 * 0.5 ** (ages / 2.0))
    assert np.allclose(
        recency.weights(interactions.drop(columns="timestamp")),
        0.25 + 0.75 * 0.5 ** ([3, 1, 2, 1, 0, 0] / np.array(2.0)),
    )
    assert np.array_equal(Recency().weights(interactions), np.ones(6))  # the default: none, as in older files
    assert Recency.of({}, "f") == Recency() and Recency.of({RECENCY: recency.array()}, "f") == recency
    for bad in ([-1.0, 0.5], [4.0, 1.5], [4.0]):
        with pytest.raises(ValueError, match=r"f: 'ease.recency' must be a half-life >= 0 and a floor in \[0, 1\]"):
            Recency.of({RECENCY: np.array(bad)}, "f")


def test_the_upper_triangle_round_trips_and_a_wrong_length_is_refused():
    matrix = np.arange(16.0).reshape(4, 4)
    matrix = matrix + matrix.T
    assert np.array_equal(symmetric(upper_triangle(matrix), 4), matrix)
    with pytest.raises(ValueError, match="not the upper triangle of a 5 x 5"):
        symmetric(upper_triangle(matrix), 5)


@pytest.mark.parametrize("bound", [0.8, 1.2, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("dislike_weight", [0.0, 0.5, 1.0])
def test_one_rating_and_one_user_move_the_release_by_at_most_their_sensitivities(bound, dislike_weight):
    rng = np.random.default_rng(0)
    items = [str(i) for i in range(90)]
    worst_record, worst_user = 0.0, 0.0
    for _ in range(300):
        # around the bound's edge: a vector of about bound^2 ratings is scaled or not by one more
        size = int(np.clip(rng.normal(bound**2 * 1.3, bound + 2.0), 1, 90))
        rated = rng.choice(90, size=size, replace=False)
        ratings = rng.choice([1.0, 2.0, 4.0, 5.0], size=len(rated))
        frame = pd.DataFrame({"user": "u", "item": [str(i) for i in rated], "rating": ratings})
        fewer = frame.iloc[1:]  # the same user without one rating (maybe without any)
        x, y = (interaction_vectors(f, 3.0, dislike_weight, items, bound) for f in (frame, fewer))
        x, y = (v if len(v) else np.zeros((1, 90)) for v in (x, y))
        worst_record = max(worst_record, float(np.linalg.norm(cooccurrence(x) - cooccurrence(y))))
        worst_user = max(worst_user, float(np.linalg.norm(cooccurrence(x))))
    assert worst_record <= record_sensitivity(bound) + 1e-9
    assert worst_user <= user_sensitivity(bound) + 1e-9


@pytest.mark.parametrize("bound", [2.0, 4.0])
def test_both_sensitivities_are_reached_by_a_user_whose_vector_reaches_the_bound(bound):
    items = [str(i) for i in range(30)]
    likes = int(bound**2)  # one more like than bound^2 - 1: norm exactly the bound, unscaled
    frame = pd.DataFrame({"user": "u", "item": items[:likes], "rating": 5.0})
    x, y = (interaction_vectors(f, 3.0, 0.5, items, bound) for f in (frame, frame.iloc[1:]))
    assert np.linalg.norm(cooccurrence(x) - cooccurrence(y)) == pytest.approx(record_sensitivity(bound))
    assert np.linalg.norm(cooccurrence(x)) == pytest.approx(user_sensitivity(bound))  # bound^2 entries of 1


def test_the_clients_noise_shares_add_up_to_the_stated_noise():
    shares = noise_share(0.64, 8.0, 5)
    assert shares * np.sqrt(5) == pytest.approx(0.64 * record_sensitivity(8.0))
    assert record_sensitivity(8.0) == 8.0 and record_sensitivity(0.5) == 1.0
    assert record_sensitivity(1.0) == pytest.approx(np.sqrt(2.0))


def test_user_level_epsilon_is_the_gaussian_mechanism_at_the_user_multiplier():
    accountant = RDPAccountant()
    accountant.history = [(0.64 * 8.0 / (8.0 * np.sqrt(65.0 / 2.0)), 1.0, 1)]
    assert user_level_epsilon(0.64, 8.0, 1e-5) == pytest.approx(accountant.get_epsilon(delta=1e-5))
    assert user_level_epsilon(0.0, 8.0, 1e-5) == np.inf


def test_ease_is_its_closed_form_with_a_zero_diagonal():
    rng = np.random.default_rng(1)
    likes = (rng.random((40, 12)) < 0.3).astype(float)
    gram = likes.T @ likes
    weights = fit_ease(gram, l2=5.0)
    precision = np.linalg.inv(gram + 5.0 * np.eye(12))
    expected = np.eye(12) - precision @ np.diag(1.0 / np.diag(precision))
    assert np.allclose(np.diag(weights), 0.0) and np.allclose(weights, expected - np.diag(np.diag(expected)))
    # EASE's weights minimize |X - XB|^2 + l2 |B|^2 under diag(B) = 0: moving an entry only raises it
    loss = lambda b: np.square(likes - likes @ b).sum() + 5.0 * np.square(b).sum()  # noqa: E731
    nudged = weights.copy()
    nudged[2, 5] += 1e-3
    assert loss(nudged) > loss(weights)


def test_the_rank_projection_keeps_planted_blocks_and_ranks_a_users_block_first():
    rng = np.random.default_rng(2)
    blocks = np.repeat([0, 1], 10)  # items 0-9 and 10-19; each user likes items of one block
    likes = np.zeros((60, 20))
    for user in range(60):
        likes[user, rng.choice(np.flatnonzero(blocks == user % 2), 4, replace=False)] = 1.0
    noise = rng.normal(0, 2.0, (20, 20))
    noised = likes.T @ likes + np.triu(noise) + np.triu(noise, 1).T
    for rank in (0, 2):
        scores = likes @ fit_ease(noised, l2=20.0, rank=rank)
        own = scores[np.arange(60)[:, None], np.flatnonzero(blocks == 0)[None] + 10 * (np.arange(60)[:, None] % 2)]
        other = scores[
            np.arange(60)[:, None], np.flatnonzero(blocks == 0)[None] + 10 * (1 - np.arange(60)[:, None] % 2)
        ]
        assert (own.mean(1) > other.mean(1)).mean() > 0.95, rank


def test_config_refuses_what_the_item_item_model_cannot_do():
    FedRecConfig.from_mapping(EASE)
    for extra, message in (
        ({"num-server-rounds": 3}, "set num-server-rounds = 0"),
        ({"ease-noise": 0.0}, "ease-noise must be > 0"),
        ({"client-dp": True}, "client-dp does not apply"),
        ({"resume": True, "out": "x"}, "nothing to resume"),
        ({"item-statistics": True}, "item-statistics are used by recommender = 'mf' only"),
        ({"fraction-evaluate": 0.5}, "evaluated centrally"),
        ({"ease-dislike-weight": 1.5}, r"'ease-dislike-weight' must be in \[0, 1\], got 1.5"),
    ):
        with pytest.raises(ConfigError, match=message):
            FedRecConfig.from_mapping(EASE | extra)
    with pytest.raises(ConfigError, match="'num-server-rounds' must be >= 1 for recommender = 'mf'"):
        FedRecConfig.from_mapping({"recommender": "mf", "num-server-rounds": 0})


def test_the_evaluator_scores_a_users_ratings_times_the_weights():
    cfg = resolve_config("smoke")
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    items = catalog_order(central.data.items["item"])
    evaluator = ItemItemEvaluator(central, 3.0)
    zero = ArrayRecord({ITEM_WEIGHTS: Array(np.zeros((len(items),) * 2, np.float32))})
    assert evaluator(zero)["auc"] == pytest.approx(0.5)  # all ties
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(len(items),) * 2).astype(np.float32)
    evaluator(ArrayRecord({ITEM_WEIGHTS: Array(weights)}))
    user = evaluator.examples[0].user
    train = central.split.train_interactions
    own = train[train["user"] == user]
    liked, disliked = (own[own["rating"] > 3.0]["item"].astype(str), own[own["rating"] <= 3.0]["item"].astype(str))
    likes_only = weights[[items.index(i) for i in liked]].sum(0)  # no dislike weight stored: an older file
    assert np.allclose(evaluator.catalog_scores(user), likes_only, atol=1e-4)
    evaluator(ArrayRecord({ITEM_WEIGHTS: Array(weights), DISLIKE_WEIGHT: Array(np.array([0.5], np.float32))}))
    expected = likes_only + 0.5 * weights[[items.index(i) for i in disliked]].sum(0)
    assert len(disliked) and np.allclose(evaluator.catalog_scores(user), expected, atol=1e-4)
    with pytest.raises(ValueError, match="the catalog has"):
        evaluator(ArrayRecord({ITEM_WEIGHTS: Array(weights[:-1, :-1])}))
    with pytest.raises(ValueError, match=r"'ease.dislike-weight' must be one value in \[0, 1\], not \[2.0\]"):
        evaluator(ArrayRecord({ITEM_WEIGHTS: Array(weights), DISLIKE_WEIGHT: Array(np.array([2.0], np.float32))}))


def _exact_sum(cfg: FedRecConfig) -> np.ndarray:
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    items = catalog_order(central.data.items["item"])
    partitions = load_federated_data(
        cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, cfg.federation.num_clients
    ).partitions
    train = central.split.train_interactions
    ease = cfg.item_item
    parts = [
        interaction_vectors(train[train["user"].isin(p)], 3.0, ease.ease_dislike_weight, items, ease.ease_bound)
        for p in partitions
    ]
    return sum(symmetric(cooccurrence(p), len(items)) for p in parts)


def test_without_noise_the_federated_fit_equals_the_fit_of_the_exact_sum(tmp_path):
    overrides = EASE | {"dp": False, "ease-noise": 0.0, "secure-aggregation": False, "out": str(tmp_path / "run")}
    cfg = resolve_config("smoke", overrides=overrides)
    out, summary = simulate(cfg, echo=None)
    with np.load(out / "item-weights.npz") as stored:
        weights = stored[ITEM_WEIGHTS]
    expected = fit_ease(_exact_sum(cfg), cfg.item_item.ease_l2, cfg.item_item.ease_rank)
    assert np.abs(weights - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    assert summary["rounds"] == 0 and summary["ease"]["user_level_epsilon"] is None and not summary["dp"]


@pytest.fixture(scope="module")
def ease_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ease")
    overrides = EASE | {"secure-aggregation": True, "out": str(folder / "run")}
    overrides |= {"client-state-dir": str(folder / "nodes"), "ease-bound": 3.0}
    cfg = resolve_config("smoke", overrides=overrides)
    run_configured(cfg, "tests.test_collaborative:logged_client_app", folder / "flower")
    return cfg, folder


def test_the_federated_fit_sums_through_secagg_and_no_message_carries_user_data(ease_run):
    cfg, folder = ease_run
    rounds = [json.loads(line) for line in (folder / "run" / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 1 and rounds[0]["clients_ok"] == cfg.federation.num_clients
    assert rounds[0]["hr@10"] is not None and rounds[0]["bytes_up"] > 0
    entries = [json.loads(p.read_text()) for p in (folder / "run" / "client-messages").glob("*.json")]
    assert len(entries) > cfg.federation.num_clients  # the SecAgg+ stages: the release never travels alone
    size = len(_exact_sum(cfg))
    for entry in entries:  # nothing user-shaped: only the catalog's triangle, keys and shares
        for name, shape in entry["down"] + entry["up"]:
            assert "user" not in name, entry
            assert shape in ([size * (size + 1) // 2], [1], [0]), entry
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["recommender"] == "ease" and summary["ease"]["clients"] == cfg.federation.num_clients
    assert (summary["ease"]["recency_half_life"], summary["ease"]["recency_floor"]) == (4.0, 0.1)
    assert summary["ease"]["record_sensitivity"] == 3.0  # the bound, at bounds of at least 1.554
    assert summary["ease"]["noise_std"] == pytest.approx(3.0 * cfg.item_item.ease_noise)
    assert summary["ease"]["user_sensitivity"] == pytest.approx(np.sqrt(45.0))  # 3 x sqrt((9 + 1) / 2)


def test_each_node_writes_the_release_to_its_ledger_and_epsilon_is_opacus_own(ease_run):
    cfg, folder = ease_run
    accountant = RDPAccountant()
    accountant.history = [(cfg.item_item.ease_noise, 1.0, 1)]
    expected = accountant.get_epsilon(delta=cfg.record_dp.target_delta)
    for partition in range(cfg.federation.num_clients):
        ledger = json.loads((folder / "nodes" / f"partition-{partition}" / "privacy-ledger.json").read_text())
        assert ledger["history"] == [[cfg.item_item.ease_noise, 1.0, 1]]
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["epsilon"]["max"] == pytest.approx(expected) and summary["dp"]
    reports = [json.loads(line) for line in (folder / "run" / "privacy.jsonl").read_text().splitlines()]
    assert len(reports) == cfg.federation.num_clients and all(r["round"] == 0 for r in reports)


HISTORY = pd.DataFrame({"item": ["50", "181", "100", "1"], "rating": [5.0, 5.0, 2.0, 4.0]})


def test_recommend_with_ease_weights_scores_the_historys_ratings_times_them(ease_run, smoke_run):
    cfg, folder = ease_run
    weights_file = folder / "run" / "item-weights.npz"
    found = recommend(None, HISTORY, k=5, item_tables=weights_file)
    items = catalog_order(load_interaction_data(cfg.data.dataset).items["item"])
    with np.load(weights_file) as stored:
        weights = stored[ITEM_WEIGHTS].astype(np.float64)
        assert stored[DISLIKE_WEIGHT].tolist() == [cfg.item_item.ease_dislike_weight] == [0.5]
        assert stored[RECENCY].tolist() == pytest.approx([4.0, 0.1])
    rated = np.zeros(len(items))
    rated[[items.index(i) for i in ("50", "181", "1")]] = 1.0
    rated[items.index("100")] = 0.5  # rating 2 is not a like: it enters at the dislike weight
    ages = {"50": 3, "181": 2, "100": 1, "1": 0}  # no timestamps: the file's order, oldest first
    for item, age in ages.items():
        rated[items.index(item)] *= 0.1 + 0.9 * 0.5 ** (age / 4.0)
    scores = rated @ weights
    unrated = [n for n, item in enumerate(items) if item not in set(HISTORY["item"])]
    best = sorted(unrated, key=lambda n: -scores[n])[:5]
    assert [r.item for r in found] == [items[n] for n in best]
    assert [r.score for r in found] == pytest.approx([float(scores[n]) for n in best], rel=1e-6)
    _, llm_run, _ = smoke_run  # an LLM adapter reranks only what the weights retrieved
    top = recommend(llm_run / "adapter", HISTORY, k=3, candidates=5, item_tables=weights_file)
    assert {r.item for r in top} <= {r.item for r in found}


def test_an_ease_recommendation_on_the_device_never_loads_torch(ease_run, tmp_path):
    """`fedrec recommend --item-tables item-weights.npz` is numpy only: it starts in a
    second where torch's import alone takes several (mf's fold-in still needs torch).
    """
    history = tmp_path / "history.csv"
    HISTORY.to_csv(history, index=False)
    weights_file = ease_run[1] / "run" / "item-weights.npz"
    argv = ["recommend", "--item-tables", str(weights_file), "--history", str(history), "-k", "5"]
    code = f"import sys; from fedrec.cli import main; code = main({argv!r}); print(code, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *table, last = done.stdout.strip().splitlines()
    assert last == "0 False"
    expected = [r.item for r in recommend(None, HISTORY, k=5, item_tables=weights_file)]
    assert [line.split()[1] for line in table[-5:]] == expected


def test_the_llm_reranks_an_ease_retriever_whose_own_metrics_are_the_ease_runs(ease_run, tmp_path):
    folder = ease_run[1]
    overrides = {"rerank-top": 5, "item-tables": str(folder / "run" / "item-weights.npz"), "num-server-rounds": 1}
    _, summary = simulate(resolve_config("smoke", overrides=overrides | {"out": str(tmp_path / "run")}), echo=None)
    ease = json.loads((folder / "run" / "summary.json").read_text())["metrics"]
    assert summary["metrics"]["retriever_hr@10"] == pytest.approx(ease["hr@10"])
    assert summary["metrics"]["retriever_ndcg@10"] == pytest.approx(ease["ndcg@10"])
    ease_epsilon = json.loads((folder / "run" / "summary.json").read_text())["epsilon"]["max"]
    assert summary["item_tables"]["epsilon_max"] == pytest.approx(ease_epsilon)  # composed in the summary


def test_a_release_that_would_pass_target_epsilon_is_refused_before_anything_starts(tmp_path):
    cfg = resolve_config("smoke", overrides=EASE | {"target-epsilon": 4.0, "out": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=r"ease-noise 0.64 spends epsilon 7.965 .* target-epsilon 4"):
        simulate(cfg, echo=None)
    assert not (tmp_path / "run").exists()


def test_nodes_whose_budget_is_spent_decline_and_the_run_fails_naming_why(ease_run, tmp_path):
    cfg, folder = ease_run  # its nodes' ledgers already hold the release (epsilon 7.97)
    overrides = EASE | {"secure-aggregation": True, "target-epsilon": 10.0, "out": str(tmp_path / "run")}
    again = resolve_config("smoke", overrides=overrides | {"client-state-dir": cfg.server.client_state_dir})
    with pytest.raises(SimulationError):
        simulate(again, echo=None)
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert "declined: privacy budget: the co-occurrence of ratings would reach epsilon" in failed["reason"], failed
    assert "no node answered the item-cooccurrence request" in failed["reason"], failed
    for partition in range(cfg.federation.num_clients):  # a declined release is not written to the ledger
        ledger = json.loads((folder / "nodes" / f"partition-{partition}" / "privacy-ledger.json").read_text())
        assert len(ledger["history"]) == 1
