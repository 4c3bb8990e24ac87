"""Training the LLM to rank (objective = 'ranking'): groups of a liked item and unrated
negatives after one history, softmax cross-entropy, DP-SGD clipping per group."""

import numpy as np
import pandas as pd
import pytest
import torch
from opacus import GradSampleModule

from fedrec.config import ConfigError, FedRecConfig, RecordDPConfig
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import PrivateTraining, group_grad_samples, plan_round
from fedrec.tasks.collaborative.folded import FoldedInTables
from fedrec.tasks.preference.examples import PreferenceExample
from fedrec.tasks.ranking.training import ranking_groups, ranking_loss
from fedrec.tasks.training import train_adapter
from tests.conftest import local, tiny_scorer

HISTORY = (("1", True), ("2", False))


def test_groups_hold_each_liked_example_and_seeded_unrated_negatives():
    examples = [PreferenceExample("u", "3", 1, HISTORY), PreferenceExample("u", "4", 0, HISTORY)]
    examples.append(PreferenceExample("v", "5", 1, HISTORY))
    train = pd.DataFrame({"user": ["u", "u", "u", "v"], "item": ["1", "2", "3", "5"]})
    catalog = [str(i) for i in range(1, 30)]
    groups = ranking_groups(examples, train, catalog, 4, seed=7)
    assert [(g[0].user, g[0].item) for g in groups] == [("u", "3"), ("v", "5")]  # the dislike makes no group
    for group in groups:
        assert len(group) == 5 and group[0].label == 1 and all(ex.label == 0 for ex in group[1:])
        assert all(ex.history == HISTORY and ex.user == group[0].user for ex in group)
        rated = set(train[train["user"] == group[0].user]["item"])
        assert not {ex.item for ex in group[1:]} & rated and len({ex.item for ex in group[1:]}) == 4
    assert ranking_groups(examples, train, catalog, 4, seed=7) == groups
    assert ranking_groups(examples, train, catalog, 4, seed=8) != groups
    assert ranking_groups(examples, train, catalog[:3], 4, seed=7) == []  # too few unrated items


def test_a_negatives_pool_draws_only_the_unrated_items_the_retriever_ranks_highest():
    catalog = [str(i) for i in range(1, 30)]
    train = pd.DataFrame({"user": ["u", "u", "v"], "item": ["1", "2", "5"], "rating": [5.0, 2.0, 5.0]})
    examples = [PreferenceExample("u", "1", 1, HISTORY), PreferenceExample("v", "5", 1, HISTORY)]
    rng = np.random.default_rng(0)
    tables = {"mf.item_embeddings": rng.standard_normal((29, 4)).astype(np.float32)}
    tables["mf.item_biases"] = rng.standard_normal(29).astype(np.float32)
    retriever = FoldedInTables(tables, pd.Series(catalog), train, 3.0, ["u", "v"], "tables")
    groups = ranking_groups(examples, train, catalog, 3, seed=7, retriever=retriever, pool=5)
    assert len(groups) == 2
    for group in groups:
        user = group[0].user
        rated = set(train[train["user"] == user]["item"])
        scores = retriever.catalog_scores(user)
        unrated = [item for item in sorted(catalog) if item not in rated]
        top = set(sorted(unrated, key=lambda item: -scores[retriever.item_row[item]])[:5])
        negatives = {ex.item for ex in group[1:]}
        assert len(negatives) == 3 and negatives <= top
    wide = ranking_groups(examples, train, catalog, 3, seed=7, retriever=retriever, pool=len(catalog))
    assert wide == ranking_groups(examples, train, catalog, 3, seed=7)  # a pool of everything: uniform
    assert ranking_groups(examples, train, catalog, 3, seed=7, retriever=retriever, pool=2) == []


def test_a_negatives_pool_needs_the_ranking_objective_a_retriever_and_room():
    with pytest.raises(ConfigError, match="train-negatives-pool"):
        FedRecConfig.from_mapping({"train-negatives-pool": 50, "item-tables": "t.npz"})
    with pytest.raises(ConfigError, match="item-tables"):
        FedRecConfig.from_mapping({"train-negatives-pool": 50, "objective": "ranking"})
    with pytest.raises(ConfigError, match=">= train-negatives"):
        FedRecConfig.from_mapping({"train-negatives-pool": 3, "objective": "ranking", "item-tables": "t.npz"})
    cfg = FedRecConfig.from_mapping({"train-negatives-pool": 4, "objective": "ranking", "item-tables": "t.npz"})
    assert cfg.training.train_negatives_pool == 4


def test_ranking_loss_ignores_a_per_group_offset():
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]])
    torch.testing.assert_close(ranking_loss(scores + torch.tensor([[5.0], [-3.0]]), None), ranking_loss(scores, None))


def _groups(scorer, count=3, size=3):
    texts = [f"history {g} candidate {m}" for g in range(count) for m in range(size)]
    return scorer.prefix_states(scorer.encode(texts))


def test_grouped_per_sample_gradients_are_each_groups_own_gradient():
    scorer, size = tiny_scorer(top_layers=1, freeze_a=True), 3
    with torch.no_grad():
        for p in scorer.trainable_parameters():
            p.normal_(0.0, 0.3)
    states = _groups(scorer, 3, size)
    params = {n: p for n, p in scorer.named_parameters() if p.requires_grad}
    scorer.train()
    expected = []
    for g in range(3):
        scores = scorer(*scorer.batch(states[g * size : (g + 1) * size])).reshape(1, size)
        grads = torch.autograd.grad(ranking_loss(scores, None), list(params.values()))
        expected.append(dict(zip(params, grads, strict=True)))
    hooked = GradSampleModule(scorer, loss_reduction="mean")
    try:
        ranking_loss(scorer(*scorer.batch(states)).reshape(3, size), None).backward()
        group_grad_samples(list(params.values()), size)
        for name, p in params.items():
            assert p.grad_sample.shape == (3, *p.shape)
            for g in range(3):
                torch.testing.assert_close(p.grad_sample[g], expected[g][name], atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="groups of 2"):
            group_grad_samples([next(iter(params.values()))], 2)
    finally:
        hooked._close()


def test_dp_training_of_groups_accounts_groups_and_changes_only_lora():
    scorer, size = tiny_scorer(), 5
    states = _groups(scorer, 24, size)
    before = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, 24, 8, 1)
    ledger = PersistentAccountant()
    training = local(batch_size=8, physical_batch_size=10, learning_rate=1e-2)
    training = type(training)(training.training, ranking_loss, group_size=size)
    result = train_adapter(scorer, states, torch.zeros(24), training, PrivateTraining(plan, 1.0, ledger))
    assert ledger.history == [(1.0, pytest.approx(1 / 3), 3)] and result.steps == 3
    assert result.examples > 0 and result.loss == result.loss
    for name, p in scorer.named_parameters():
        assert torch.equal(p, before[name]) == ("lora_" not in name), name
    with pytest.raises(ValueError, match="rows"):
        train_adapter(scorer, states, torch.zeros(23), training)


def test_objective_is_a_checked_choice():
    assert FedRecConfig.from_mapping({"objective": "ranking"}).training.objective == "ranking"
    with pytest.raises(ConfigError, match="objective"):
        FedRecConfig.from_mapping({"objective": "listwise"})
