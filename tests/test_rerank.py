"""Retrieve, then rerank: with N = every candidate it is the LLM's own ranking, with
N = 0 (the LLM off) the retriever's; the retriever's catalog metrics equal the
collaborative evaluation's on the same tables."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedrec.config import resolve_config
from fedrec.models.collaborative import initial_item_arrays
from fedrec.tasks.collaborative.evaluation import CollaborativeEvaluator
from fedrec.tasks.collaborative.folded import FoldedInTables
from fedrec.tasks.collaborative.training import catalog_order
from fedrec.tasks.metrics import target_rank
from fedrec.tasks.preference.dataset import load_split
from fedrec.tasks.ranking.cases import ranking_cases
from fedrec.tasks.ranking.ranker import LLMRanker
from fedrec.tasks.ranking.rerank import RETRIEVER, RerankEvaluation, rerank_order
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
    top5 = RerankEvaluation(scorer, cases, central.prompts, 16, folded, 5, rated).metrics()
    for rank, retrieved in zip(top5["ranks"], top5[RETRIEVER + "ranks"], strict=True):
        assert (rank < 5) == (retrieved < 5) and (retrieved >= 5) <= (rank == retrieved)
