"""Retrieve, then rerank: with N = every candidate it is the LLM's own ranking, with
N = 0 (the LLM off) the retriever's; the retriever's catalog metrics equal the
collaborative evaluation's on the same tables; late fusion goes from the LLM's order
(weight 0) to the retriever's (large weights)."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedrec.config import ConfigError, resolve_config
from fedrec.models.collaborative import initial_item_arrays
from fedrec.models.item_tables import catalog_order
from fedrec.tasks.collaborative.evaluation import CollaborativeEvaluator
from fedrec.tasks.collaborative.folded import FoldedInTables
from fedrec.tasks.metrics import target_rank
from fedrec.tasks.preference.dataset import load_split
from fedrec.tasks.ranking.cases import ranking_cases
from fedrec.tasks.ranking.ranker import LLMRanker
from fedrec.tasks.ranking.rerank import RETRIEVER, RerankEvaluation, fused_scores, rerank_order
from tests.conftest import tiny_scorer


@pytest.mark.parametrize("seed", range(5))
def test_rerank_order_is_the_llms_with_every_candidate_and_the_retrievers_with_none(seed):
    rng = np.random.default_rng(seed)
    retriever, llm = rng.integers(0, 4, 30).astype(float), rng.integers(0, 4, 30).astype(float)  # many ties
    target = int(rng.integers(30))

    def position(order):
        return int(np.flatnonzero(order == target)[0])

    assert position(rerank_order(retriever, target, 30, lambda head: llm[head])) == target_rank(llm, target)
    assert position(rerank_order(retriever, target, 0, lambda head: llm[head])) == target_rank(retriever, target)
    order = rerank_order(retriever, target, 10, lambda head: llm[head])
    retrieved = rerank_order(retriever, target, 0, lambda head: llm[head])
    assert sorted(order[:10]) == sorted(retrieved[:10]) and np.array_equal(order[10:], retrieved[10:])
    assert np.all(np.diff(llm[order[:10]]) <= 0)  # the head follows the LLM
    with pytest.raises(ValueError, match="needs the LLM"):
        rerank_order(retriever, target, 3)


@pytest.mark.parametrize("seed", range(3))
def test_late_fusion_moves_the_head_from_the_llms_order_to_the_retrievers(seed):
    rng = np.random.default_rng(seed)
    retriever, llm = rng.standard_normal(30), rng.standard_normal(30) * 50.0 + 3.0  # other scales
    target = int(rng.integers(30))

    def order(weight):
        return rerank_order(retriever, target, 12, lambda head: llm[head], weight)

    assert np.array_equal(order(0.0), rerank_order(retriever, target, 12, lambda head: llm[head]))
    assert np.array_equal(order(1e6), rerank_order(retriever, target, 0))  # distinct scores: the retriever's
    head = order(1e6)[:12]
    middle = order(1.0)[:12]
    assert sorted(middle) == sorted(head)  # fusion reorders the same head
    fused = fused_scores(llm[head], retriever[head], 1.0)
    standard = (llm[head] - llm[head].mean()) / llm[head].std() + (
        retriever[head] - retriever[head].mean()
    ) / retriever[head].std()
    np.testing.assert_allclose(fused, standard)
    assert np.all(np.diff(fused_scores(llm[middle], retriever[middle], 1.0)) <= 0)
    np.testing.assert_array_equal(
        fused_scores(llm[head], np.ones(12), 5.0), (llm[head] - llm[head].mean()) / llm[head].std()
    )


def test_a_fusion_weight_without_reranking_is_refused():
    with pytest.raises(ConfigError, match="rerank-fusion-weight > 0 needs rerank-top"):
        resolve_config("smoke", overrides={"rerank-fusion-weight": 1.0})
    with pytest.raises(ConfigError, match="rerank-fusion-weight"):
        resolve_config("smoke", overrides={"rerank-fusion-weight": -1.0})


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    cfg = resolve_config("smoke")
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    cases = ranking_cases(central.data, central.split, central.eval_users, 29, seed=1)[:6]
    items = catalog_order(central.data.items["item"])
    tables = initial_item_arrays(len(items), 8, seed=3)
    tables["mf.item_biases"] = np.random.default_rng(4).standard_normal(len(items)).astype(np.float32)
    folded = FoldedInTables(
        tables, central.data.items["item"], central.split.train_interactions, 3.0, central.eval_users, "test tables"
    )
    rated = central.data.interactions.groupby("user")["item"].agg(set).to_dict()
    return central, cases, tables, folded, rated


def test_rerank_of_every_candidate_equals_the_llm_and_the_retriever_equals_the_collaborative_evaluation(setting):
    central, cases, tables, folded, rated = setting
    scorer = tiny_scorer()
    llm_ranks = LLMRanker(scorer, cases, central.prompts, 16).ranks()
    everything = RerankEvaluation(scorer, cases, central.prompts, 16, folded, 30, rated).metrics()
    assert everything["ranks"] == llm_ranks
    collaborative = CollaborativeEvaluator(central, 3.0, 8, cases)
    expected = collaborative(ArrayRecord({name: Array(values) for name, values in tables.items()}))
    for key in ("ranks", "hr@10", "ndcg@10", "recall@20", "coverage@10"):
        assert everything[RETRIEVER + key] == expected[key], key
    fusion = RerankEvaluation(scorer, cases, central.prompts, 16, folded, 30, rated)
    by_weight = fusion.metrics_by_weight((0.0, 1e6))
    assert by_weight[0.0]["ranks"] == llm_ranks and by_weight[1e6]["ranks"] == expected["ranks"]
    top5 = RerankEvaluation(scorer, cases, central.prompts, 16, folded, 5, rated).metrics()
    for rank, retrieved in zip(top5["ranks"], top5[RETRIEVER + "ranks"], strict=True):
        assert (rank < 5) == (retrieved < 5) and (retrieved >= 5) <= (rank == retrieved)
