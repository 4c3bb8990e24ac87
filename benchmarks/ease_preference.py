"""Telling a like from a dislike among a user's rated items (UAUC) with the item-item
model, against the item like-rate, on the validation split over seeds: how far is issue
#18's UAUC target (every baseline's UAUC + 0.02)?

EASE scores how likely a user is to rate an item, not to like it. Its preference scores
are compared here alone and fused with each item's like-rate (both standardized over the
held-out examples, ``ease + w x like-rate``): with the private release (the defaults,
dislikes at 0.5, and likes only) and, as an upper bound nobody can release at epsilon 8,
EASE fitted centrally without noise on signed vectors (likes +1, dislikes -1). The
like-rate is the central one ((likes + 1) / (ratings + 2) over the training ratings), the
non-private reference the issue names; a federated one is noisier. Report:
benchmarks/results/ease_preference/report.md.

    python benchmarks/ease_preference.py                 # seeds 42 and 1, about 4 min
"""

from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path

import numpy as np
import pandas as pd
from ease_denoising import L2, SPLIT, released_gram  # beside this script
from flwr.app import Array, ArrayRecord

from fedrec.config import FedRecConfig, resolve_config
from fedrec.models.item_tables import catalog_order
from fedrec.server.models import central_split
from fedrec.tasks.collaborative.evaluation import ItemItemEvaluator
from fedrec.tasks.collaborative.item_item import DISLIKE_WEIGHT, ITEM_WEIGHTS, fit_ease
from fedrec.tasks.metrics import mean_and_standard_error, roc_auc
from fedrec.tasks.preference.examples import PreferenceExample

RESULTS = Path(__file__).parent / "results" / "ease_preference"
WEIGHTS = (0.0, 1.0, 4.0)  # the like-rate's weight beside EASE's score
SIGNED_L2 = 1000.0  # the signed EASE's regularization (best of 100, 300, 1000 on seed 42)


def standardized(values: np.ndarray) -> np.ndarray:
    """``values`` with mean 0 and standard deviation 1."""
    return (values - values.mean()) / values.std()


def like_rates(train: pd.DataFrame, threshold: float, examples: list[PreferenceExample]) -> np.ndarray:
    """Each example item's smoothed like-rate over the training ratings (0.5 when unrated)."""
    liked = (train["rating"] > threshold).astype(float)
    counts = train.assign(liked=liked, item=train["item"].astype(str)).groupby("item")["liked"].agg(["sum", "count"])
    rate = ((counts["sum"] + 1.0) / (counts["count"] + 2.0)).to_dict()
    return np.array([rate.get(str(ex.item), 0.5) for ex in examples])


def private_ease_scores(cfg: FedRecConfig, evaluator: ItemItemEvaluator) -> np.ndarray:
    """The private release's EASE (the defaults' rank-16 fit) on each held-out example."""
    weights = fit_ease(released_gram(cfg), L2, cfg.item_item.ease_rank)
    dislike = np.array([cfg.item_item.ease_dislike_weight], np.float32)
    arrays = ArrayRecord({ITEM_WEIGHTS: Array(weights.astype(np.float32)), DISLIKE_WEIGHT: Array(dislike)})
    evaluator(arrays, rank=False)
    rows = evaluator.retriever
    return np.array([rows.catalog_scores(ex.user)[rows.item_row[ex.item]] for ex in evaluator.examples])


def signed_ease_scores(evaluator: ItemItemEvaluator, threshold: float) -> np.ndarray:
    """EASE fitted without noise on every training user's signed ratings (+1 like, -1 dislike)."""
    train = evaluator.central.split.train_interactions
    items = catalog_order(evaluator.central.data.items["item"])
    column = {item: n for n, item in enumerate(items)}
    users = sorted(train["user"].unique())
    row = {user: n for n, user in enumerate(users)}
    signed = np.zeros((len(users), len(items)))
    signs = np.where(train["rating"].to_numpy() > threshold, 1.0, -1.0)
    signed[[row[u] for u in train["user"]], [column[str(i)] for i in train["item"]]] = signs
    weights = fit_ease(signed.T @ signed, SIGNED_L2)
    return np.array([signed[row[ex.user]] @ weights[:, column[ex.item]] for ex in evaluator.examples])


def per_user_auc(examples: list[PreferenceExample], scores: np.ndarray) -> dict[str, float]:
    """Each user's AUC over their held-out examples (users with both classes)."""
    users = np.array([ex.user for ex in examples])
    labels = np.array([ex.label for ex in examples], dtype=bool)
    aucs = {user: roc_auc(labels[users == user], scores[users == user]) for user in np.unique(users)}
    return {user: auc for user, auc in aucs.items() if not math.isnan(auc)}


def measure(seed: int) -> dict[str, dict[str, float]]:
    """Per-user AUC of each scorer with ``seed``."""
    scorers: dict[str, dict[str, float]] = {}
    base = resolve_config("demo", overrides=SPLIT | {"seed": seed})
    central, cases = central_split(base)  # the same split and users for both releases
    threshold = base.data.like_threshold
    evaluator = ItemItemEvaluator(central, threshold, cases, "validation")
    examples = evaluator.examples
    rate = standardized(like_rates(central.split.train_interactions, threshold, examples))
    scorers["item like-rate (central)"] = per_user_auc(examples, rate)
    for dislike, release in ((0.5, "dislikes at 0.5"), (0.0, "likes only")):
        cfg = resolve_config("demo", overrides=SPLIT | {"seed": seed, "ease-dislike-weight": dislike})
        private = standardized(private_ease_scores(cfg, evaluator))
        for w in WEIGHTS:
            scorers[f"private ease ({release}) + {w:g} x like-rate"] = per_user_auc(examples, private + w * rate)
    signed = standardized(signed_ease_scores(evaluator, threshold))
    for w in WEIGHTS:
        scorers[f"signed ease without noise + {w:g} x like-rate"] = per_user_auc(examples, signed + w * rate)
    return scorers


def report(runs: dict[int, dict[str, dict[str, float]]]) -> str:
    """UAUC per scorer (each user's AUC averaged over the seeds) and paired against the like-rate."""
    seeds = list(runs)
    first = runs[seeds[0]]
    users = sorted(set.intersection(*(set(auc) for run in runs.values() for auc in run.values())))
    per_user = {name: np.mean([[runs[s][name][u] for u in users] for s in seeds], axis=0) for name in first}
    reference = per_user["item like-rate (central)"]
    lines = [
        f"# Preference (UAUC) of the item-item model on validation ({platform.machine()} CPU, seeds "
        f"{', '.join(map(str, seeds))})",
        "",
        "| scorer | UAUC | UAUC per seed | UAUC − item like-rate (paired) |",
        "|---|---|---|---|",
    ]
    for name, values in per_user.items():
        mean, se = mean_and_standard_error(values)
        gain, gain_se = mean_and_standard_error(values - reference)
        per_seed = " / ".join(f"{np.mean([runs[s][name][u] for u in users]):.4f}" for s in seeds)
        lines.append(f"| {name} | {mean:.4f} ± {se:.4f} | {per_seed} | {gain:+.4f} ± {gain_se:.4f} |")
    lines += [
        "",
        f"{len(users)} users with a like and a dislike among their 5 validation interactions; ± is one "
        "standard error over the users. Scores are standardized over the held-out examples before fusing.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    args = parser.parse_args()
    runs = {seed: measure(seed) for seed in args.seeds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.md").write_text(report(runs))
    print((RESULTS / "report.md").read_text())


if __name__ == "__main__":
    main()
