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
from fedrec.models.item_tables import catalog_order, read_item_tables
from fedrec.privacy.item_statistics import user_contributions
from fedrec.protocol.records import ITEM_LIKES, ITEM_RATINGS
from fedrec.server.models import central_split
from fedrec.tasks.collaborative.evaluation import CollaborativeEvaluator
from fedrec.tasks.collaborative.priors import STATISTICS_FILE, ItemCounts
from fedrec.tasks.ranking.ranker import paired_differences

POPULARITY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LIKE_RATE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
KEPT = ("auc", "auc_se", "uauc", "uauc_se", "hr@10", "hr@10_se", "ndcg@10", "ndcg@10_se", "recall@20", "coverage@10")


class RunEvaluation:
    """A run's validation and test split with their ranking cases, loaded once, and its
    final tables measured over them with the priors at given weights.
    """

    def __init__(self, cfg: FedRecConfig, tables: ArrayRecord) -> None:
        self.cfg, self.tables = cfg, tables
        self.parts = {part: central_split(cfg.replace(eval_split=part)) for part in ("validation", "test")}

    def measure(self, counts: ItemCounts, part: str, weights: tuple[float, float], zeros: bool = False) -> dict:
        """Metrics on ``part`` with popularity and like-rate ``weights``; ``zeros``: item
        tables of zeros, so that only the priors score (preference only when the
        popularity weight is 0: the ranking would be all ties).
        """
        central, cases = self.parts[part]
        cfg = self.cfg
        evaluate = CollaborativeEvaluator(
            central,
            cfg.data.like_threshold,
            cfg.collaborative.mf_dim,
            cases,
            part,
            counts.popularity() * weights[0],
            counts,
            weights[1],
        )
        tables = self.tables
        if zeros:
            tables = ArrayRecord({name: Array(np.zeros_like(array.numpy())) for name, array in tables.items()})
        return evaluate(tables, rank=not zeros or weights[0] > 0)

    def select(self, counts: ItemCounts) -> tuple[tuple[float, float], dict[str, Any]]:
        """The weights chosen on validation, and every validation point measured."""
        points: dict[str, Any] = {}
        for weight in POPULARITY_WEIGHTS:
            points[f"popularity {weight}"] = self.measure(counts, "validation", (weight, 0.0))
        best_popularity = max(POPULARITY_WEIGHTS, key=lambda w: points[f"popularity {w}"]["ndcg@10"])
        for weight in LIKE_RATE_WEIGHTS:
            metrics = self.measure(counts, "validation", (best_popularity, weight))
            points[f"popularity {best_popularity}, like-rate {weight}"] = metrics
        chosen = max(LIKE_RATE_WEIGHTS, key=lambda w: points[f"popularity {best_popularity}, like-rate {w}"]["auc"])
        return (best_popularity, chosen), points

    def references(self, counts: ItemCounts) -> dict[str, dict]:
        """The priors alone on test: from the federated (noised) counts, and from exact
        counts of every user's training history (non-private references).
        """
        central = self.parts["test"][0]
        items = catalog_order(central.data.items["item"])
        train, threshold = central.split.train_interactions, self.cfg.data.like_threshold
        exact = ItemCounts(*user_contributions(train, threshold, items, math.inf))
        return {
            "federated popularity alone (private)": self.measure(counts, "test", (1.0, 0.0), zeros=True),
            "federated like-rates alone (private)": self.measure(counts, "test", (0.0, 1.0), zeros=True),
            "user+item like-rates, exact counts (non-private)": self.measure(exact, "test", (0.0, 1.0), zeros=True),
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
    evaluation = RunEvaluation(cfg, tables)
    weights, validation = evaluation.select(counts)
    test = evaluation.measure(counts, "test", weights)
    summary = json.loads((args.run / "summary.json").read_text())
    baselines = summary.get("ranking_baselines", {})
    paired = {name: paired_differences(test["ranks"], m["ranks"]) for name, m in baselines.items() if "ranks" in m}
    alone = evaluation.references(counts)
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
