"""Ranking task: metrics against hand-computed values, prefix-cached candidate scoring
against the naive per-candidate loop, ranking cases, and baselines on planted data.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.data.interactions import load_interaction_data
from fedrec.models.prefix_cache import PREFIX_CACHE
from fedrec.models.prefix_store import PrefixStore
from fedrec.models.split_check import full_forward_score
from fedrec.tasks.metrics import catalog_coverage, hit_rate_at_k, ndcg_at_k, target_rank
from fedrec.tasks.preference.examples import split_examples
from fedrec.tasks.ranking.baselines import (
    bpr_mf,
    federated_mf,
    full_catalog_metrics,
    popularity_ranks,
    random_expectation,
)
from fedrec.tasks.ranking.cases import RankingCase, ranking_cases
from fedrec.tasks.ranking.ranker import paired_differences, ranking_metrics
from tests.conftest import tiny_scorer


def test_rank_metrics_match_hand_computed_values():
    assert target_rank([0.9, 0.1, 0.5]) == 0
    assert target_rank([0.5, 0.9, 0.5, 0.1]) == 2  # a tie counts against the target
    assert target_rank([1.0, 1.0, 1.0]) == 2  # a constant scorer ranks the target last
    ranks = [0, 3, 12]
    assert hit_rate_at_k(ranks, 10) == pytest.approx(2 / 3)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1.0 + 1.0 / math.log2(5)) / 3)
    assert ndcg_at_k([9], 10) == pytest.approx(1 / math.log2(11)) and ndcg_at_k([10], 10) == 0.0
    assert catalog_coverage([["a", "b"], ["b", "c"]], 10) == pytest.approx(0.3)
    assert random_expectation(100)["hr@10"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="finite"):
        target_rank([0.1, float("nan")])


def test_paired_differences_are_per_user_means_with_paired_standard_errors():
    model, baseline = [0, 3, 12, 1], [2, 3, 0, 20]
    diff = paired_differences(model, baseline)
    hits = np.array([0, 0, -1, 1])
    gains = np.array([1 - 1 / math.log2(4), 0, -1, 1 / math.log2(3)])
    assert diff["hr@10_diff"] == pytest.approx(hits.mean())
    assert diff["ndcg@10_diff"] == pytest.approx(gains.mean())
    assert diff["ndcg@10_diff_se"] == pytest.approx(gains.std(ddof=1) / 2)
    assert paired_differences(model, model)["ndcg@10_diff_se"] == 0.0
    with pytest.raises(ValueError, match="same cases"):
        paired_differences(model, baseline[:3])


@pytest.mark.parametrize(
    ("top_layers", "dtype", "tolerance"), [(0, "float32", 1e-5), (1, "float32", 1e-5), (1, "bfloat16", 0.05)]
)
@pytest.mark.parametrize("packs", [True, False])
def test_prefix_cached_candidate_scores_equal_the_naive_loop(top_layers, dtype, tolerance, packs):
    scorer = tiny_scorer(top_layers=top_layers)
    scorer.split.last_position_top_layer = packs  # False: a causal LM the packed rows do not serve
    assert scorer.packs_groups == packs
    scorer.compute_dtype = getattr(torch, dtype)
    with torch.no_grad():  # a trained-looking adapter: B non-zero
        for name, param in scorer.peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.1)
    history = "Items the user liked: film a; film b; film c. Items the user disliked: film d."
    texts = [f"{history}\nWill the user like film {i}{' part two' * (i % 3)}? Answer Yes or No." for i in range(37)]
    tokens = scorer.encode(texts)
    for t in tokens:  # the process-wide cache may hold them from another test
        PREFIX_CACHE.drop(scorer.cache_key(t))
    first = scorer.score_candidates(tokens, batch_size=8)  # the key/value path, keeping the frozen states
    assert all((PREFIX_CACHE.get(scorer.cache_key(t)) is not None) == packs for t in tokens)
    again = scorer.score_candidates(tokens, batch_size=8)  # packed rows on the kept states (when packable)
    naive = torch.tensor([full_forward_score(scorer, t) for t in tokens])
    assert first.dtype == again.dtype == torch.float32
    # tolerance: float32 summation order; bf16 autocast rounds batched and single forwards differently
    torch.testing.assert_close(first, naive, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(again, naive, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(scorer.score(tokens), naive, atol=tolerance, rtol=tolerance)  # the kept states are right
    assert naive.std() > 1e-4  # the candidates really score differently


def test_stored_candidate_states_serve_another_process_without_the_frozen_layers(tmp_path):
    scorer = tiny_scorer(top_layers=1)
    with torch.no_grad():
        for name, param in scorer.peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.1)
    history = "Items the user liked: film a; film b. Items the user disliked: film c."
    tokens = scorer.encode([f"{history}\nWill the user like film {i}{' two' * (i % 3)}?" for i in range(11)])
    store = PrefixStore(tmp_path / "store")
    for t in tokens:
        PREFIX_CACHE.drop(scorer.cache_key(t))
    first = scorer.score_candidates(tokens, batch_size=4, store=store)  # key/value path, states stored
    assert len(list((tmp_path / "store").iterdir())) == 1
    for t in tokens:  # a new process: the in-memory cache is empty
        PREFIX_CACHE.drop(scorer.cache_key(t))
    frozen_runs = []
    hook = scorer.split.layers[0].register_forward_pre_hook(lambda *_: frozen_runs.append(1))
    try:
        again = scorer.score_candidates(tokens, batch_size=4, store=store)
    finally:
        hook.remove()
    assert not frozen_runs  # only the layers above the split ran, on the stored states
    torch.testing.assert_close(again, first, atol=1e-5, rtol=1e-5)
    assert all(PREFIX_CACHE.get(scorer.cache_key(t)) is not None for t in tokens)


def _two_taste_dataset(users=60, items=40, per_user=14, seed=0):
    """Users of taste 0 like (and only rate) even items, taste 1 odd items: every
    item is equally popular, so only a personalised model can rank well.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        own = np.arange(u % 2, items, 2)
        for t, item in enumerate(rng.choice(own, size=per_user, replace=False)):
            rows.append({"user": str(u), "item": str(item), "rating": 5.0, "timestamp": t})
    inter = pd.DataFrame(rows)
    titles = pd.DataFrame({"item": [str(i) for i in range(items)], "title": [f"film {i}" for i in range(items)]})
    return inter, titles


def test_ranking_cases_hold_the_liked_held_out_item_and_unrated_negatives(tmp_path):
    inter, titles = _two_taste_dataset()
    inter.loc[inter["user"] == "3", "rating"] = 1.0  # user 3 dislikes everything: no case
    inter.to_csv(tmp_path / "inter.csv", index=False)
    titles.to_csv(tmp_path / "items.csv", index=False)
    data = load_interaction_data(str(tmp_path / "inter.csv"), str(tmp_path / "items.csv"))
    split = split_examples(data, history_length=5)
    users = sorted(split.test)
    cases = ranking_cases(data, split, users, num_negatives=9, seed=1)
    assert "3" not in {c.user for c in cases} and len(cases) == len(users) - 1
    for case in cases:
        rated = set(inter.loc[inter["user"] == case.user, "item"])
        assert case.candidates[0] == split.test[case.user][-1].item and case.candidates[0] in rated
        assert len(set(case.candidates)) == 10 and not set(case.candidates[1:]) & rated
        assert case.candidates[0] not in {item for item, _ in case.history}
    assert ranking_cases(data, split, users, num_negatives=9, seed=1) == cases  # fixed seed
    assert ranking_cases(data, split, users, num_negatives=9, seed=2) != cases


def test_mf_baselines_learn_planted_tastes_that_popularity_cannot_see(tmp_path):
    inter, titles = _two_taste_dataset()
    inter.to_csv(tmp_path / "inter.csv", index=False)
    titles.to_csv(tmp_path / "items.csv", index=False)
    data = load_interaction_data(str(tmp_path / "inter.csv"), str(tmp_path / "items.csv"))
    split = split_examples(data, history_length=5)
    cases = ranking_cases(data, split, sorted(split.test), num_negatives=9, seed=0)
    random_hr = random_expectation(10, k=3)["hr@3"]
    train = split.train_interactions
    catalog = sorted(titles["item"])
    mf = ranking_metrics(bpr_mf(train, cases, catalog, like_threshold=3.0, seed=0).ranks(cases), k=3)
    partitions = [[u for u in sorted(split.test) if int(u) % 3 == c] for c in range(3)]
    fed_model = federated_mf(train, cases, catalog, partitions, like_threshold=3.0, seed=0)
    fed = ranking_metrics(fed_model.ranks(cases), k=3)
    popular = ranking_metrics(popularity_ranks(train, cases), k=3)
    for learned in (mf, fed):
        assert learned["hr@3"] >= random_hr + 0.3, learned
        assert learned["hr@3"] > popular["hr@3"] + 0.2, (learned, popular)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # repeatable on several threads: the same run gives the same model, bit for bit
    try:
        again = federated_mf(train, cases, catalog, partitions, like_threshold=3.0, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(again.item_emb, fed_model.item_emb) and torch.equal(again.user_emb, fed_model.user_emb)


def test_full_catalog_metrics_exclude_rated_items_and_count_coverage():
    items = ["a", "b", "c", "d", "e"]
    cases = [RankingCase("u", ("c", "x"), ()), RankingCase("v", ("e", "x"), ())]
    rated = {"u": {"a", "c"}, "v": {"e"}}
    scores = {"u": np.array([9.0, 1.0, 5.0, 7.0, 0.0]), "v": np.array([3.0, 2.0, 1.0, 0.0, -1.0])}
    metrics = full_catalog_metrics(scores.__getitem__, items, cases, rated)
    # u: "a" is rated and skipped, "d" (7) beats the target "c" (5): rank 1; v: the target is last of 5: rank 4
    assert metrics["recall@20"] == 1.0
    # top-10 lists: u -> d, c, b, e; v -> a, b, c, d, e: the whole catalog
    assert metrics["coverage@10"] == 1.0
    narrow = full_catalog_metrics(scores.__getitem__, items, cases[:1], rated)
    assert narrow["coverage@10"] == pytest.approx(4 / 5)


def test_bfloat16_candidate_scores_are_not_quantized():
    """Under bf16 autocast the answer logits are projected in float32: large logits
    keep their differences (in bf16 a logit near 10 is resolved only to 0.06).
    """
    scorer = tiny_scorer()
    scorer.compute_dtype = torch.bfloat16
    with torch.no_grad():
        scorer.peft.get_output_embeddings().weight.mul_(200.0)
    texts = [
        f"Items the user liked: film a; film b.\nWill the user like film {i}? Answer Yes or No." for i in range(40)
    ]
    tokens = scorer.encode(texts)
    cached = scorer.score_candidates(tokens, batch_size=8)
    naive = torch.tensor([full_forward_score(scorer, t) for t in tokens])
    assert cached.abs().max() > 1.0
    assert len(set(cached.tolist())) == len(tokens) and len(set(naive.tolist())) == len(tokens)
