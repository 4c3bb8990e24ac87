"""Recency when a user's row is scored by the item-item model (``recommender = 'ease'``),
chosen on the validation split over seeds.

The held-out interactions are each user's latest, and a user's taste drifts, so their
latest ratings may say more about their next one than their first. The weights a user's
row is built with at scoring time (``ease-recency-half-life``, ``ease-recency-floor``:
``floor + (1 - floor) * 0.5 ** (age / half_life)``, ``age`` the number of the user's ratings
after this one) are computed on the user's device from their own ratings, after the
release: they cost no privacy and leave the release's sensitivity as it is. Each point
scores the same release (fedrec's own client functions and seeds, as in
``benchmarks/ease_denoising.py``), the defaults', the defaults' noise before the record
sensitivity was tightened, and the noiseless one, against every rating alike on the
defaults' release (the model before the option). Report: benchmarks/results/ease_recency/report.md.

    python benchmarks/ease_recency.py                  # seeds 42 and 1, about 6 min
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ease_denoising import (
    DEFAULT_RELEASE,
    EVERY_RATING_ALIKE,
    L2,
    LOOSER_RELEASE,
    RELEASES,
    SPLIT,
    ranks_of,
    released_gram,
    report,
)  # beside this script

from fedrec.config import resolve_config
from fedrec.server.models import central_split
from fedrec.tasks.collaborative.evaluation import ItemItemEvaluator
from fedrec.tasks.collaborative.item_item import Recency, fit_ease
from fedrec.tasks.metrics import hit_rate_at_k, ndcg_at_k
from fedrec.tasks.ranking.ranker import K

RESULTS = Path(__file__).parent / "results" / "ease_recency"
HALF_LIVES = (2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0)
FLOORS = (0.05, 0.1, 0.15, 0.25, 0.35)
GRID = {"every rating alike": EVERY_RATING_ALIKE} | {
    f"half-life {half_life:g}, floor {floor:g}": Recency(half_life, floor)
    for half_life in HALF_LIVES
    for floor in FLOORS
}
THE_DEFAULTS = {"half-life 4, floor 0.1 (the defaults)": Recency(4.0, 0.1)}
NOISELESS = {"every rating alike": EVERY_RATING_ALIKE} | THE_DEFAULTS  # the noiseless release


def measure(seeds: list[int]) -> dict[str, list[list[int]]]:
    """Each (release, recency) point's ranks per seed; the release is fitted at rank 16."""
    ranks: dict[str, list[list[int]]] = {}
    for seed in seeds:
        for release, points in ((DEFAULT_RELEASE, GRID), (LOOSER_RELEASE, THE_DEFAULTS), ("without DP", NOISELESS)):
            cfg = resolve_config("demo", overrides=SPLIT | RELEASES[release] | {"seed": seed})
            weights = fit_ease(released_gram(cfg), L2, 16)
            central, cases = central_split(cfg)
            evaluator = ItemItemEvaluator(central, cfg.data.like_threshold, cases, "validation")
            for name, recency in points.items():
                point = f"{release}, {name}"
                ranks.setdefault(point, []).append(ranks_of(cfg, weights, evaluator, recency))
                found = ranks[point][-1]
                print(f"seed {seed}: {point}: HR@10 {hit_rate_at_k(found, K):.4f} NDCG@10 {ndcg_at_k(found, K):.4f}")
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    title = "Recency of a user's ratings when scored by the item-item model"
    text = report(measure(args.seeds), args.seeds, title, ("release, recency", "every rating alike"))
    (RESULTS / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
