"""The priors of a finished collaborative run, weighted on validation, measured on test.

A ``recommender = 'mf'`` run with ``item-statistics = true`` and ``validation-interactions
> 0`` leaves its item tables (``item-tables.npz``) and federated item counts
(``item-statistics.npz``). This script re-evaluates those final tables with the priors of
:mod:`fedrec.tasks.collaborative.priors` at several weights: the popularity weight is the
one with the best validation NDCG@10, then the like-rate weight the one with the best
validation AUC; test is measured once, with those weights, beside the run's baselines
(same split and cases, from its ``summary.json``) and with paired differences. The
priors cost no privacy: they post-process the run's releases and each user's own data.

    python benchmarks/per_user_priors.py runs/per-user-mf [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedrec.config import FedRecConfig
from fedrec.config.presets import read_config_file
from fedrec.models.collaborative import read_item_tables
from fedrec.privacy.item_statistics import STATISTICS_FILE, user_contributions
from fedrec.protocol.records import ITEM_LIKES, ITEM_RATINGS
from fedrec.tasks.collaborative.evaluation import CollaborativeEvaluator
from fedrec.tasks.collaborative.priors import ItemCounts
from fedrec.tasks.collaborative.training import catalog_order
from fedrec.tasks.preference.dataset import load_split
from fedrec.tasks.ranking.cases import ranking_cases
from fedrec.tasks.ranking.ranker import paired_differences

POPULARITY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LIKE_RATE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
KEPT = ("auc", "auc_se", "uauc", "uauc_se", "hr@10", "hr@10_se", "ndcg@10", "ndcg@10_se", "recall@20", "coverage@10")


def evaluator(cfg: FedRecConfig, part: str, counts: ItemCounts, weights: tuple[float, float]):
    """The run's evaluator on ``part`` with popularity and like-rate weights ``weights``."""
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    cases = ranking_cases(
        central.data, central.split, central.eval_users, cfg.evaluation.ranking_negatives, cfg.federation.seed, part
    )[: cfg.evaluation.ranking_users]
    prior = counts.popularity() * weights[0]
    dim = cfg.collaborative.mf_dim
    return CollaborativeEvaluator(central, cfg.data.like_threshold, dim, cases, part, prior, counts, weights[1])


def measure(
    cfg: FedRecConfig, tables: ArrayRecord, counts, part: str, weights: tuple[float, float], rank: bool = True
) -> dict:
    """The metrics of the final tables on ``part`` with ``weights`` (preference only unless ``rank``)."""
    return evaluator(cfg, part, counts, weights)(tables, rank)


def select(cfg: FedRecConfig, tables: ArrayRecord, counts) -> tuple[tuple[float, float], dict[str, Any]]:
    """The weights chosen on validation, and every validation point measured."""
    points: dict[str, Any] = {}
    for weight in POPULARITY_WEIGHTS:
        points[f"popularity {weight}"] = measure(cfg, tables, counts, "validation", (weight, 0.0))
    best_popularity = max(POPULARITY_WEIGHTS, key=lambda w: points[f"popularity {w}"]["ndcg@10"])
    for weight in LIKE_RATE_WEIGHTS:
        metrics = measure(cfg, tables, counts, "validation", (best_popularity, weight))
        points[f"popularity {best_popularity}, like-rate {weight}"] = metrics
    best_like_rate = max(LIKE_RATE_WEIGHTS, key=lambda w: points[f"popularity {best_popularity}, like-rate {w}"]["auc"])
    return (best_popularity, best_like_rate), points


def zero_tables(like: ArrayRecord) -> ArrayRecord:
    """Item tables of zeros shaped as ``like``: the model scores only its priors."""
    return ArrayRecord({name: Array(np.zeros_like(array.numpy())) for name, array in like.items()})


def references(cfg: FedRecConfig, tables: ArrayRecord, counts) -> dict[str, dict]:
    """The priors alone on test: from the federated (noised) counts, and from exact counts
    of every user's whole training history (non-private references).
    """
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    items = catalog_order(central.data.items["item"])
    exact = ItemCounts(*user_contributions(central.split.train_interactions, cfg.data.like_threshold, items, math.inf))
    zeros = zero_tables(tables)
    return {
        "federated popularity alone (private)": measure(cfg, zeros, counts, "test", (1.0, 0.0)),
        "federated like-rates alone (private)": measure(cfg, zeros, counts, "test", (0.0, 1.0), rank=False),
        "user+item like-rates, exact counts (non-private)": measure(cfg, zeros, exact, "test", (0, 1), rank=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished recommender = 'mf' run with item statistics")
    parser.add_argument("--out", type=Path, help="where priors.json goes (default: the run's folder)")
    args = parser.parse_args()
    cfg = FedRecConfig.from_mapping(read_config_file(args.run / "config.toml"))
    if not cfg.data.validation_interactions:
        raise SystemExit(f"{args.run}: the run has no validation interactions to select the weights on")
    tables = ArrayRecord({k: Array(v) for k, v in read_item_tables(args.run / "item-tables.npz").items()})
    with np.load(args.run / STATISTICS_FILE) as stored:
        stats = cfg.item_statistics
        counts = ItemCounts(
            stored[ITEM_RATINGS], stored[ITEM_LIKES], stats.item_statistics_noise * stats.item_statistics_bound
        )
    weights, validation = select(cfg, tables, counts)
    test = measure(cfg, tables, counts, "test", weights)
    summary = json.loads((args.run / "summary.json").read_text())
    baselines = summary.get("ranking_baselines", {})
    paired = {name: paired_differences(test["ranks"], m["ranks"]) for name, m in baselines.items() if "ranks" in m}
    alone = references(cfg, tables, counts)
    paired["federated popularity alone (private)"] = paired_differences(
        test["ranks"], alone["federated popularity alone (private)"]["ranks"]
    )
    report = {
        "run": str(args.run),
        "weights": {"popularity": weights[0], "like_rate": weights[1]},
        "test": {k: test[k] for k in KEPT if k in test},
        "test_ranks": test["ranks"],
        "paired_differences": paired,
        "references": {name: {k: m[k] for k in KEPT if k in m} for name, m in alone.items()},
        "baselines": {name: {k: m[k] for k in KEPT if k in m} for name, m in summary.get("baselines", {}).items()},
        "ranking_baselines": {name: {k: m[k] for k in KEPT if k in m} for name, m in baselines.items()},
        "validation": {name: {k: m[k] for k in KEPT if k in m} for name, m in validation.items()},
        "client_dp": summary.get("client_dp"),
    }
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    (out / "priors.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("weights", "test", "paired_differences", "references")}, indent=2))


if __name__ == "__main__":
    main()
