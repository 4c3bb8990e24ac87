"""Baselines that need every user's data, so only the simulation harness can compute
them (a deployed server holds none): the preference baselines over all training
interactions, and the ranking baselines with federated MF over the clients' partitions.
They are written into the run's ``summary.json`` beside the federated result.
"""

from __future__ import annotations

from typing import Any

from ..config import FedRecConfig
from ..tasks.preference.baselines import preference_baselines
from ..tasks.preference.dataset import load_federated_data, load_split
from ..tasks.ranking.baselines import random_expectation, ranking_baselines
from ..tasks.ranking.cases import ranking_cases
from ..tasks.ranking.ranker import paired_differences


def harness_baselines(cfg: FedRecConfig) -> dict[str, Any]:
    """``baselines`` (preference AUC on the central evaluation users' held-out
    interactions) and, when the run ranks, ``ranking_baselines`` on the same cases.
    """
    seed, evaluation, part = cfg.federation.seed, cfg.evaluation, cfg.evaluation.eval_split
    central = load_split(cfg.data, seed, evaluation.eval_users)
    examples = central.held_out_examples(part)
    found: dict[str, Any] = {"baselines": preference_baselines(central.split, examples, cfg.data.like_threshold)}
    if not evaluation.ranking_users:
        return found
    cases = ranking_cases(central.data, central.split, central.eval_users, evaluation.ranking_negatives, seed, part)
    cases = cases[: evaluation.ranking_users]
    if not cases:
        return found
    partitions = load_federated_data(cfg.data, seed, evaluation.eval_users, cfg.federation.num_clients).partitions
    rated = central.data.interactions.groupby("user")["item"].agg(set).to_dict()
    catalog = sorted(central.data.items["item"])
    ranking = ranking_baselines(
        central.split.train_interactions, cases, catalog, rated, partitions, cfg.data.like_threshold, seed
    )
    ranking["random"] = random_expectation(evaluation.ranking_negatives + 1)
    return found | {"ranking_baselines": ranking}


def paired_with_model(summary: dict[str, Any]) -> dict[str, Any]:
    """``paired_differences``: the final model's HR@10 and NDCG@10 minus each ranking
    baseline's on the same cases, and minus its own retriever's when it reranked, with
    paired standard errors (empty without ranks).
    """
    metrics = summary["metrics"]
    ranks = metrics.get("ranks")
    if not ranks:
        return {}
    others = {name: m["ranks"] for name, m in summary.get("ranking_baselines", {}).items() if "ranks" in m}
    if metrics.get("retriever_ranks"):
        others["retriever"] = metrics["retriever_ranks"]
    return {"paired_differences": {name: paired_differences(ranks, other) for name, other in others.items()}}
