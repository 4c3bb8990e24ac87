"""The collaborative model (``recommender = 'mf'``): matrix factorization whose item
tables are federated and whose user embeddings stay on the clients.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable
from opacus.accountants import RDPAccountant
from safetensors.torch import load_file

from fedrec.cli import main
from fedrec.client.app import build_client_app
from fedrec.client.recommend import RecommendError, recommend
from fedrec.config import ConfigError, FedRecConfig, RecordDPConfig, resolve_config
from fedrec.data.interactions import load_interaction_data
from fedrec.models.adapter import PROJECTOR_FILE
from fedrec.models.collaborative import (
    MatrixFactorization,
    initial_item_arrays,
    initial_user_embeddings,
)
from fedrec.models.item_tables import ITEM_BIASES, ITEM_EMBEDDINGS, catalog_order
from fedrec.privacy.item_statistics import record_level_entry, record_sensitivity, user_contributions
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import PrivateTraining, plan_round
from fedrec.protocol.records import NUM_EXAMPLES, SECONDS, STEPS, TRAIN_LOSS, UPDATE_NORM
from fedrec.protocol.replies import reply_metrics
from fedrec.protocol.secagg import CLEAR_METRICS
from fedrec.simulation.runner import simulate
from fedrec.tasks.collaborative.evaluation import CollaborativeEvaluator
from fedrec.tasks.collaborative.likes import Likes, fold_in
from fedrec.tasks.collaborative.priors import ItemCounts, like_rate_logits
from fedrec.tasks.collaborative.training import BPRTraining, train_bpr
from fedrec.tasks.preference.baselines import preference_baselines
from fedrec.tasks.preference.dataset import load_federated_data, load_split
from fedrec.tasks.preference.evaluation import preference_metrics
from fedrec.tasks.preference.examples import PreferenceExample
from fedrec.tasks.preference.rates import logit
from tests.conftest import run_configured


def _planted_likes(users: int = 40, items: int = 30, per_user: int = 10, seed: int = 0) -> tuple[Likes, set[int]]:
    """Every user likes only even items: a structure the item biases and embeddings can learn."""
    rng = np.random.default_rng(seed)
    even = np.arange(0, items, 2)
    user_rows = np.repeat(np.arange(users), per_user)
    item_rows = np.concatenate([rng.choice(even, per_user, replace=False) for _ in range(users)])
    return Likes(torch.tensor(user_rows), torch.tensor(item_rows)), set(even.tolist())


def _model(users: int, items: int, dim: int = 8) -> MatrixFactorization:
    model = MatrixFactorization(users, items, dim)
    model.load_item_arrays(initial_item_arrays(items, dim, seed=1), "initial")
    model.set_users(initial_user_embeddings(users, dim, seed=2))
    return model


def test_scores_are_user_item_dot_products_plus_item_biases():
    model = _model(3, 5)
    users, items = torch.tensor([0, 2]), torch.tensor([[1, 4, 0], [3, 3, 2]])
    scores = model(users, items)
    u, q, b = model.users.weight, model.items.weight, model.item_biases.weight[:, 0]
    expected = torch.stack([q[items[n]] @ u[users[n]] + b[items[n]] for n in range(2)])
    assert scores.shape == (2, 3) and torch.allclose(scores, expected)


def test_item_tables_round_trip_and_a_mismatch_names_the_source():
    model = _model(2, 6)
    arrays = model.item_arrays()
    assert set(arrays) == {ITEM_EMBEDDINGS, ITEM_BIASES} and arrays[ITEM_EMBEDDINGS].shape == (6, 8)
    other = _model(2, 6)
    other.load_item_arrays(arrays, "a")
    assert np.array_equal(other.item_arrays()[ITEM_EMBEDDINGS], arrays[ITEM_EMBEDDINGS])
    with pytest.raises(ValueError, match=r"global item tables: arrays .* expected"):
        _model(2, 7).load_item_arrays(arrays, "global item tables")


def test_dp_training_noises_every_row_gives_per_sample_gradients_and_records_the_steps():
    likes, _ = _planted_likes()
    model = _model(40, 30)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    plan = plan_round(RecordDPConfig(target_epsilon=8.0), 1, len(likes), batch_size=100, epochs=1)
    ledger = PersistentAccountant()
    seen: dict[str, tuple[int, ...]] = {}
    original_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):  # the per-sample gradients Opacus clipped, before its step
        for p in (p for group in self.param_groups for p in group["params"]):
            name = next(n for n, q in model.named_parameters() if q is p)
            if getattr(p, "grad_sample", None) is not None:
                seen[name] = tuple(p.grad_sample.shape)
        return original_step(self, *args, **kwargs)

    torch.optim.SGD.step = spy
    try:
        result = train_bpr(model, likes, BPRTraining(1.0, 100, 1), PrivateTraining(plan, 1.0, ledger))
    finally:
        torch.optim.SGD.step = original_step
    assert set(seen) == {"users.weight", "items.weight", "item_biases.weight"}
    assert seen["items.weight"][1:] == (30, 8)
    assert ledger.steps == result.steps == plan.steps and ledger.epsilon(1e-5) > 0
    for name, p in model.named_parameters():  # noise reaches every row: the update's support reveals nothing
        moved = (p.detach() - before[name]).abs().reshape(len(p), -1).amax(dim=1)
        assert (moved > 0).all(), name


def test_dp_training_is_repeatable_from_its_seed_whatever_the_process_drew_before():
    likes, _ = _planted_likes()
    plan = plan_round(RecordDPConfig(target_epsilon=8.0), 1, len(likes), batch_size=100, epochs=1)
    tables = []
    for draws_before in (0, 7):  # another process state: the Poisson sample and the noise must not follow it
        torch.rand(draws_before)
        model = _model(40, 30)
        train_bpr(model, likes, BPRTraining(1.0, 100, 1, seed=3), PrivateTraining(plan, 1.0, PersistentAccountant()))
        tables.append(model.items.weight.detach().clone())
    assert torch.equal(tables[0], tables[1])
    model = _model(40, 30)
    train_bpr(model, likes, BPRTraining(1.0, 100, 1, seed=4), PrivateTraining(plan, 1.0, PersistentAccountant()))
    assert not torch.equal(model.items.weight, tables[0])  # the seed decides


def test_bpr_then_fold_in_learns_planted_likes():
    likes, even = _planted_likes()
    model = _model(40, 30)
    train_bpr(model, likes, BPRTraining(20.0, 64, 20, seed=0))
    fold_in(model, likes)
    with torch.no_grad():
        scores = model(torch.arange(40), torch.arange(30).repeat(40, 1)).mean(0)
    top = set(torch.argsort(scores, descending=True)[:15].tolist())
    assert len(top & even) >= 13, sorted(top)


def test_the_collaborative_model_refuses_lora_settings_and_federated_evaluation():
    with pytest.raises(ConfigError, match="no LoRA"):
        FedRecConfig.from_mapping({"recommender": "mf", "strategy": "ffa-lora"})
    with pytest.raises(ConfigError, match="fraction-evaluate"):
        FedRecConfig.from_mapping({"recommender": "mf", "fraction-evaluate": 0.5})
    with pytest.raises(ConfigError, match="recommender"):
        FedRecConfig.from_mapping({"recommender": "svd"})
    with pytest.raises(ConfigError, match=r"mf-fold-in .* record-level DP"):
        FedRecConfig.from_mapping({"recommender": "mf", "mf-fold-in": True, "dp": True})
    with pytest.raises(ConfigError, match="mf-like-rate-weight > 0 needs item-statistics"):
        FedRecConfig.from_mapping({"recommender": "mf", "mf-like-rate-weight": 1.0})


def test_like_rates_are_the_federated_counts_smoothed_more_the_noisier_they_are():
    counts = ItemCounts(np.array([10.0, 0.0, -3.0]), np.array([8.0, 0.0, 1.0]))  # -3 ratings read as 0
    overall = 9 / 10  # likes 8 + 0 + 1 over ratings 10 + 0 + 0
    assert counts.overall_like_rate() == pytest.approx(overall)
    assert np.allclose(counts.like_rates(), [(8 + 5 * overall) / 15, overall, overall])  # unrated: the overall rate
    noisy = ItemCounts(counts.ratings, counts.likes, noise_std=20.0)
    assert np.allclose(noisy.like_rates()[0], (8 + 25 * overall) / 35)
    history = ((("1", True), ("2", True), ("3", False)), ())  # a user with 2 likes of 3, one without history
    examples = [PreferenceExample("a", "1", 1, history[0]), PreferenceExample("b", "3", 0, history[1])]
    users = np.array([(2 + 5 * overall) / 8, overall])
    expected = logit(users) + logit(counts.like_rates()[[0, 2]])
    assert np.allclose(like_rate_logits(counts, examples, [0, 2]), expected)


def test_the_like_rate_prior_adds_user_and_item_logits_to_preference_scores():
    cfg = resolve_config("smoke")
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    items = catalog_order(central.data.items["item"])
    counts = ItemCounts(*user_contributions(central.split.train_interactions, 3.0, items, 1000.0))  # exact
    zero = ArrayRecord(
        {
            ITEM_EMBEDDINGS: Array(np.zeros((len(items), 8), np.float32)),
            ITEM_BIASES: Array(np.zeros(len(items), np.float32)),
        }
    )
    assert CollaborativeEvaluator(central, 3.0, 8)(zero, rank=False)["auc"] == pytest.approx(0.5)  # all ties
    evaluator = CollaborativeEvaluator(central, 3.0, 8, item_counts=counts, like_rate_weight=2.0)
    expected = 2.0 * like_rate_logits(counts, evaluator.examples, [items.index(ex.item) for ex in evaluator.examples])
    metrics = evaluator(zero, rank=False)  # zero tables: the MF part scores 0, the prior is all there is
    assert metrics["auc"] == pytest.approx(preference_metrics(evaluator.examples, expected)["auc"])
    baseline = preference_baselines(central.split, evaluator.examples)["user+item"]  # the same rates, exact counts
    assert metrics["auc"] == pytest.approx(baseline["auc"], abs=0.02)


def _array_shapes(message: Message) -> list[list]:
    return [
        [name, list(array.shape)] for record in message.content.array_records.values() for name, array in record.items()
    ]


def message_log_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Writes the names and shapes of every array a node receives and sends (outermost mod)."""
    reply = call_next(message, context)
    folder = Path(str(context.run_config["out"])) / "client-messages"
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"node": context.node_id, "partition": int(context.node_config["partition-id"])}
    entry |= {"down": _array_shapes(message), "up": _array_shapes(reply) if not reply.has_error() else []}
    entry["up_metrics"] = sorted(reply_metrics(reply)) if not reply.has_error() else []
    (folder / f"{message.metadata.message_id}.json").write_text(json.dumps(entry))
    return reply


logged_client_app = build_client_app(outer_mods=[message_log_mod])


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mf")
    overrides = {"recommender": "mf", "secure-aggregation": True, "mf-dim": 8, "out": str(folder / "run")}
    overrides |= {"client-state-dir": str(folder / "nodes"), "item-statistics": True, "mf-popularity-weight": 0.5}
    cfg = resolve_config("smoke", overrides=overrides)
    run_configured(cfg, "tests.test_collaborative:logged_client_app", folder / "flower")
    return cfg, folder


def test_federated_mf_trains_with_secagg_and_dp_and_user_embeddings_never_travel(mf_run):
    cfg, folder = mf_run
    rounds = [json.loads(line) for line in (folder / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["clients_ok"] for r in rounds[1:]] == [cfg.federation.num_clients] * cfg.federation.num_server_rounds
    assert all("collect-masked" in r["bytes_by_stage"] for r in rounds[1:])
    last = rounds[-1]
    assert last["hr@10"] is not None and last["auc"] is not None and 0 < last["coverage@10"] <= 1
    # the sampled candidates are a subset of the unrated catalog: the target ranks no better among all of it
    assert last["recall@20"] <= np.mean(np.array(last["ranks"]) < 20)
    users = {}
    for partition in range(cfg.federation.num_clients):
        stored = np.load(folder / "nodes" / f"partition-{partition}" / "user-embeddings.npy")
        users[partition] = list(stored.shape)
        assert stored.shape[1] == 8 and np.isfinite(stored).all()
    entries = [json.loads(p.read_text()) for p in (folder / "run" / "client-messages").glob("*.json")]
    rounds_run = cfg.federation.num_clients * cfg.federation.num_server_rounds
    assert len(entries) >= 2 * rounds_run  # at least the masked input and the unmask of each node-round
    trained = [e for e in entries if any(name == ITEM_EMBEDDINGS for name, _ in e["down"])]
    assert len(trained) == rounds_run  # the masked-input stage carries the item tables
    for entry in entries:
        for name, shape in entry["down"] + entry["up"]:
            assert shape != users[entry["partition"]] and "user" not in name, entry
        # per-client facts stay on the node: only the allowlisted metrics travel in the clear
        assert set(entry["up_metrics"]) <= CLEAR_METRICS, entry["up_metrics"]
    hidden = {NUM_EXAMPLES, TRAIN_LOSS, STEPS, SECONDS, UPDATE_NORM}
    assert not hidden & CLEAR_METRICS and any(e["up_metrics"] for e in trained)
    assert all(r["train_examples"] > 0 and r["train_loss"] > 0 for r in rounds[1:])  # from the unmasked sum
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["recommender"] == "mf" and (folder / "run" / "item-tables.npz").exists()


def test_federated_mf_epsilon_equals_opacus_on_each_nodes_ledger(mf_run):
    cfg, folder = mf_run
    summary = json.loads((folder / "run" / "summary.json").read_text())
    epsilons = []
    for partition in range(cfg.federation.num_clients):
        ledger = json.loads((folder / "nodes" / f"partition-{partition}" / "privacy-ledger.json").read_text())
        accountant = RDPAccountant()
        accountant.history = [tuple(h) for h in ledger["history"]]
        assert sum(steps for _, _, steps in ledger["history"]) > 0
        epsilons.append(accountant.get_epsilon(delta=cfg.record_dp.target_delta))
    assert summary["epsilon"]["max"] == pytest.approx(max(epsilons), rel=1e-9)
    assert max(epsilons) <= cfg.record_dp.target_epsilon * 1.001


def test_item_statistics_are_the_clients_sums_within_the_stated_noise_and_compose_into_epsilon(mf_run):
    cfg, folder = mf_run
    stats = cfg.item_statistics
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    items = catalog_order(central.data.items["item"])
    partitions = load_federated_data(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, 3).partitions
    train = central.split.train_interactions
    exact = [
        user_contributions(train[train["user"].isin(p)], 3.0, items, stats.item_statistics_bound) for p in partitions
    ]
    with np.load(folder / "run" / "item-statistics.npz") as stored:
        for n, name in enumerate(("stats.ratings", "stats.likes")):
            noise = stored[name] - sum(e[n] for e in exact)
            std = stats.item_statistics_noise * stats.item_statistics_bound
            assert np.abs(noise).max() < 6 * std and 0.5 * std < noise.std() < 1.5 * std
    report = json.loads((folder / "run" / "summary.json").read_text())["item_statistics"]
    accountant = RDPAccountant()
    accountant.history = [(stats.item_statistics_noise, 1.0, 1)]
    assert report["user_level_epsilon"] == pytest.approx(accountant.get_epsilon(delta=cfg.record_dp.target_delta))
    assert report["clients"] == 3 and report["bytes_up"] > 3 * 2 * len(items) * 4
    # one rating moves a user's scaled vector by at most sqrt(2) (the bound is 5 here)
    record_multiplier = stats.item_statistics_noise * stats.item_statistics_bound / math.sqrt(2)
    for partition in range(3):
        ledger = json.loads((folder / "nodes" / f"partition-{partition}" / "privacy-ledger.json").read_text())
        assert ledger["history"][0] == [record_multiplier, 1.0, 1]  # released before round 1
    reports = [json.loads(line) for line in (folder / "run" / "privacy.jsonl").read_text().splitlines()]
    before_training = [r for r in reports if r["round"] == 0]
    assert len(before_training) == 3  # the release is in the results folder too, for `fedrec audit`
    assert all(r["ledger"] == [[record_multiplier, 1.0, 1]] for r in before_training)
    assert main(["audit", str(folder / "run")]) == 0


def test_mf_under_client_level_dp_without_secagg_gets_exact_item_statistics(tmp_path):
    overrides = {"recommender": "mf", "strategy": "fedavg", "secure-aggregation": False, "dp": False}
    overrides |= {"client-dp": True, "item-statistics": True, "item-statistics-noise": 0.0}
    overrides |= {"item-statistics-bound": 1000.0, "mf-popularity-weight": 0.5, "out": str(tmp_path / "run")}
    cfg = resolve_config("smoke", overrides=overrides)
    out, summary = simulate(cfg, echo=None)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["clients_ok"] for r in rounds[1:]] == [cfg.federation.num_clients] * cfg.federation.num_server_rounds
    assert summary["client_dp"]["epsilon"] > 0 and not summary["dp"]  # the guarantee is client-level only
    assert summary["item_statistics"]["user_level_epsilon"] is None  # noise off: no privacy claimed
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    items = catalog_order(central.data.items["item"])
    train, clients = central.split.train_interactions, cfg.federation.num_clients
    partitions = load_federated_data(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, clients).partitions
    bound = cfg.item_statistics.item_statistics_bound
    exact = [user_contributions(train[train["user"].isin(p)], 3.0, items, bound) for p in partitions]
    with np.load(out / "item-statistics.npz") as stored:
        for n, name in enumerate(("stats.ratings", "stats.likes")):
            plain = sum(e[n] for e in exact)
            assert np.allclose(stored[name], plain, atol=1e-3), name  # the plain sums, float32 in thousands
            assert stored[name].sum() > 0


def test_user_contributions_are_exact_sums_of_indicators_scaled_to_the_bound():
    interactions = pd.DataFrame(
        {"user": ["a", "a", "a", "b"], "item": ["1", "2", "3", "2"], "rating": [5.0, 1.0, 4.0, 5.0]}
    )
    ratings, likes = user_contributions(interactions, 3.0, ["1", "2", "3"], bound=2.0)
    scale = 2.0 / np.sqrt(3 + 2)  # user a: 3 ratings, 2 likes
    assert np.allclose(ratings, [scale, scale + 1.0, scale]) and np.allclose(likes, [scale, 1.0, scale])
    ratings, likes = user_contributions(interactions, 3.0, ["1", "2", "3"], bound=100.0)
    assert np.array_equal(ratings, [1, 2, 1]) and np.array_equal(likes, [1, 1, 1])  # noise off, no scaling: exact


@pytest.mark.parametrize("bound", [0.5, 2.0, 5.0, 50.0])
def test_one_rating_moves_the_statistics_by_at_most_the_record_sensitivity(bound):
    rng = np.random.default_rng(0)
    items = [str(i) for i in range(40)]
    moved = []
    for trial in range(200):
        rated = rng.choice(40, size=int(rng.integers(1, 40)), replace=False)
        user = pd.DataFrame({"user": "u", "item": [str(i) for i in rated], "rating": rng.integers(1, 6, len(rated))})
        full = np.concatenate(user_contributions(user, 3.0, items, bound))
        drop = trial % len(user)  # remove one rating: the neighbouring dataset
        fewer = np.concatenate(user_contributions(user.drop(index=drop), 3.0, items, bound))
        moved.append(np.linalg.norm(full - fewer))
    assert max(moved) <= record_sensitivity(bound) + 1e-12
    if bound >= 1.0:  # sqrt(2) binds: a user below the bound losing a liked rating moves by exactly that
        assert max(moved) == pytest.approx(math.sqrt(2.0))
    assert record_level_entry(4.0, bound) == (4.0 * bound / record_sensitivity(bound), 1.0, 1)


def test_dp_sgd_noise_is_calibrated_to_the_budget_left_after_earlier_releases():
    dp = RecordDPConfig(target_epsilon=8.0)
    alone = plan_round(dp, 5, 1000, 100, 1)
    entry = (2.0, 1.0, 1)
    after = plan_round(dp, 5, 1000, 100, 1, spent=[entry])
    assert after.noise_multiplier > alone.noise_multiplier
    total = PersistentAccountant("rdp", [entry, (after.noise_multiplier, after.sample_rate, after.steps * 5)])
    assert 8.0 * 0.99 < total.epsilon(1e-5) <= 8.0
    with pytest.raises(ValueError, match="already spend"):
        plan_round(dp, 5, 1000, 100, 1, spent=[(0.1, 1.0, 1)])


HISTORY = pd.DataFrame({"item": ["50", "181", "100", "1"], "rating": [5.0, 5.0, 2.0, 4.0]})


def test_recommend_with_item_tables_folds_the_user_in_on_the_device(mf_run):
    cfg, folder = mf_run
    tables = folder / "run" / "item-tables.npz"
    found = recommend(None, HISTORY, k=5, item_tables=tables)
    data = load_interaction_data(cfg.data.dataset)
    items = catalog_order(data.items["item"])
    with np.load(tables) as stored:
        model = MatrixFactorization(1, len(items), 8)
        model.load_item_arrays({name: stored[name] for name in stored.files}, "tables")
    fold_in(model, Likes.of(HISTORY.assign(user="u"), cfg.data.like_threshold, ["u"], items))
    with torch.no_grad():
        scores = model(torch.zeros(1, dtype=torch.long), torch.arange(len(items))[None])[0].numpy()
    with np.load(folder / "run" / "item-statistics.npz") as stored:
        scores = scores + 0.5 * np.log1p(np.maximum(stored["stats.ratings"], 0.0))
    unrated = [n for n, item in enumerate(items) if item not in set(HISTORY["item"])]
    best = sorted(unrated, key=lambda n: -scores[n])[:5]
    assert [r.item for r in found] == [items[n] for n in best]
    assert [r.score for r in found] == pytest.approx([float(scores[n]) for n in best], rel=1e-5)


def test_retrieve_then_rerank_over_the_whole_catalog_equals_the_llms_own_ranking(mf_run, smoke_run):
    _, folder = mf_run
    _, llm_run, _ = smoke_run
    catalog, tables = len(load_interaction_data("ml-100k").items), folder / "run" / "item-tables.npz"
    reranked = recommend(llm_run / "adapter", HISTORY, k=10, candidates=catalog, item_tables=tables)
    alone = recommend(llm_run / "adapter", HISTORY, k=10)
    assert [r.item for r in reranked] == [r.item for r in alone]
    assert [r.score for r in reranked] == pytest.approx([r.score for r in alone], abs=1e-4)
    top = recommend(llm_run / "adapter", HISTORY, k=3, candidates=5, item_tables=tables)
    retrieved = [r.item for r in recommend(None, HISTORY, k=5, item_tables=tables)]
    assert {r.item for r in top} <= set(retrieved)  # the LLM reranks only what was retrieved


def test_recommend_refuses_a_missing_or_broken_item_tables_file(mf_run, tmp_path):
    with pytest.raises(RecommendError, match="does not exist"):
        recommend(None, HISTORY, item_tables=tmp_path / "nothing.npz")
    broken = tmp_path / "run" / "item-tables.npz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a zip")
    shutil.copy(mf_run[1] / "run" / "config.toml", broken.parent / "config.toml")
    with pytest.raises(RecommendError, match="not a readable item-tables file"):
        recommend(None, HISTORY, item_tables=broken)


def test_hybrid_llm_trained_to_rank_reranks_an_mf_runs_retrieval_and_composes_epsilon(mf_run, tmp_path):
    _, folder = mf_run
    tables = folder / "run" / "item-tables.npz"
    overrides = {"llm-input": "hybrid", "item-tables": str(tables), "mf-dim": 8, "out": str(tmp_path / "hybrid")}
    overrides |= {"objective": "ranking", "train-negatives": 3, "train-negatives-pool": 20, "rerank-top": 10}
    cfg = resolve_config("smoke", overrides=overrides | {"num-server-rounds": 1, "learning-rate": 0.05})
    out, summary = simulate(cfg, echo=None)
    assert summary["llm_input"] == "hybrid" and summary["rounds"] == 1
    trained = json.loads((out / "rounds.jsonl").read_text().splitlines()[-1])
    assert trained["clients_ok"] == cfg.federation.num_clients and trained["train_loss"] > 0
    metrics = summary["metrics"]
    assert metrics["auc"] is not None and len(metrics["ranks"]) == len(metrics["retriever_ranks"]) > 0
    for rank, retrieved in zip(metrics["ranks"], metrics["retriever_ranks"], strict=True):
        assert (rank < 10) == (retrieved < 10)  # the LLM only reorders the retriever's top 10
    assert 0 < metrics["coverage@10"] <= 1 and "retriever" in summary["paired_differences"]
    mf_summary = json.loads((folder / "run" / "summary.json").read_text())
    composed = summary["epsilon"]["composed"]
    assert composed["max"] == pytest.approx(summary["epsilon"]["max"] + mf_summary["epsilon"]["max"])
    assert composed["delta"] == pytest.approx(2 * cfg.record_dp.target_delta)
    projector = load_file(str(out / "adapter" / PROJECTOR_FILE))
    assert projector["soft_tokens.outer.weight"].abs().max() > 0  # trained away from its zero start
    with pytest.raises(ConfigError, match="hybrid"):
        resolve_config("smoke", overrides={"llm-input": "hybrid"})
    # on the device: the hybrid adapter reranks with the user folded in from the history
    found = recommend(out / "adapter", HISTORY, k=5, candidates=20, item_tables=tables)
    retrieved = [r.item for r in recommend(None, HISTORY, k=20, item_tables=tables)]
    assert len(found) == 5 and {r.item for r in found} <= set(retrieved)
    default_tables = recommend(out / "adapter", HISTORY, k=5, candidates=20)  # the tables it was trained with
    assert len(default_tables) == 5
    with pytest.raises(RecommendError, match="soft tokens"):
        recommend(out / "adapter", HISTORY, k=5, candidates=20, config=cfg.replace(item_tables=str(tmp_path)))
