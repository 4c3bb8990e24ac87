"""Federated matrix factorization (``recommender = 'mf'``) through the Flower path,
without and with record-level DP, beside the baselines on the same split.

Each variant is one ``fedrec simulate`` run (SecAgg+ on, item tables aggregated by FedAvg, user
embeddings kept on the clients; central evaluation folds the evaluation users in) on
MovieLens-100K with every user evaluated, 5 held-out interactions per user (so UAUC is
defined) and every user whose last held-out interaction is a like ranked among 100
candidates. The baselines come from the same runs' summaries (same split, same cases).
The report and each run's summary.json, rounds.jsonl and config.toml are written to
benchmarks/results/federated_mf/.

    python benchmarks/federated_mf.py                 # 4 clients
    python benchmarks/federated_mf.py --variants "ease (no DP)" "ease (DP)"   # rerun these, keep the rest
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import resolve_config
from fedrec.simulation.runner import simulate
from fedrec.tasks.metrics import hit_rate_at_k, mean_and_standard_error, ndcg_at_k
from fedrec.tasks.ranking.ranker import K

RESULTS = Path(__file__).parent / "results" / "federated_mf"
RUNS = Path("runs") / "benchmark-federated-mf"  # whole run folders (not committed)
# Settings chosen on the validation split (validation-interactions = 5, eval-split =
# validation; see the README): without DP more local epochs and a larger model pay; with
# DP the mf-* defaults, chosen over seeds by benchmarks/mf_dp_sweep.py.
PLAIN = {"dp": False, "mf-dim": 32, "mf-learning-rate": 20.0, "mf-batch-size": 1024, "mf-local-epochs": 5}
PRIVATE = {"dp": True, "target-epsilon": 8.0, "num-server-rounds": 10}  # the mf-* defaults
EASE = {"recommender": "ease", "num-server-rounds": 0}
POPULARITY = {"item-statistics": True, "item-statistics-noise": 4.0, "mf-popularity-weight": 0.5}
VARIANTS = {
    "mf (no DP)": PLAIN | {"num-server-rounds": 20},
    "mf + federated popularity (no DP)": PLAIN
    | {"num-server-rounds": 20, "item-statistics": True}
    | {"item-statistics-noise": 0.0, "mf-popularity-weight": 0.5},
    "mf (DP)": PRIVATE,
    "mf + federated popularity (DP)": PRIVATE | POPULARITY,
    # the item-item model, fitted in one exchange; without DP: no bound, no projection
    "ease (no DP)": EASE | {"dp": False, "ease-noise": 0.0, "ease-bound": 1000.0, "ease-rank": 0, "ease-l2": 500.0},
    "ease (DP)": EASE,  # the ease-* defaults: record-level epsilon 7.97
    "ease, likes only (DP)": EASE | {"ease-dislike-weight": 0.0},  # the defaults before report-ease-dislikes.md
    "ease, every rating alike (DP)": EASE | {"ease-recency-half-life": 0.0},  # the defaults before ease_recency.py
    # the defaults' noise std before the record sensitivity was tightened from sqrt(130) to 8
    # (record-level epsilon 5.26 for that release under the new analysis): the release as before
    "ease, the noise before the tighter sensitivity (DP)": EASE | {"ease-noise": 0.64 * math.sqrt(130.0) / 8.0},
}
PAIRED = (
    "ease (DP)",
    (
        "mf (DP)",
        "ease, likes only (DP)",
        "ease, every rating alike (DP)",
        "ease, the noise before the tighter sensitivity (DP)",
        "mf (no DP)",
    ),
)


def per_case(ranks: list[int]) -> dict[str, np.ndarray]:
    """Each ranked user's HR@10 and NDCG@10 from their target's rank."""
    return {
        "hr@10": np.array([hit_rate_at_k([r], K) for r in ranks]),
        "ndcg@10": np.array([ndcg_at_k([r], K) for r in ranks]),
    }


def paired_between_variants(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Lines: :data:`PAIRED`'s variant minus each of the others on the same cases."""
    name, others = PAIRED
    if name not in summaries:
        return []
    lines = ["", f"Paired, {name} minus another variant on the same cases:", ""]
    mine = per_case(summaries[name]["metrics"]["ranks"])
    for other in (o for o in others if o in summaries):
        theirs = per_case(summaries[other]["metrics"]["ranks"])
        cells = [mean_and_standard_error(mine[k] - theirs[k]) for k in ("hr@10", "ndcg@10")]
        lines.append(
            f"* {other}: HR@10 {cells[0][0]:+.4f} ± {cells[0][1]:.4f}, NDCG@10 {cells[1][0]:+.4f} ± {cells[1][1]:.4f}"
        )
    return lines


def cell(metrics: dict[str, Any], key: str) -> str:
    """A metric with its standard error, or '-'."""
    value, se = metrics.get(key), metrics.get(f"{key}_se")
    return "-" if value is None else f"{value:.4f}" + ("" if se is None else f" ± {se:.4f}")


def paired_cell(paired: dict[str, float], key: str) -> str:
    """A paired difference with its standard error, or '-'."""
    if f"{key}_diff" not in paired:
        return "-"
    return f"{paired[f'{key}_diff']:+.4f} ± {paired[f'{key}_diff_se']:.4f}"


def metric_row(name: str, privacy: str, metrics: dict[str, Any], extra: str) -> str:
    """A table row: the ranking and preference metrics, then ``extra`` cells."""
    cells = " | ".join(cell(metrics, k) for k in ("hr@10", "ndcg@10", "recall@20", "coverage@10", "auc", "uauc"))
    return f"| {name} | {privacy} | {cells} {extra}"


def report(summaries: dict[str, dict[str, Any]], clients: int) -> str:
    """The markdown table: each variant, then the baselines of the first run."""
    lines = [
        f"# Federated MF through Flower ({clients} clients, SecAgg+), {platform.machine()} CPU",
        "",
        "| model | privacy | HR@10 | NDCG@10 | Recall@20 | coverage@10 | AUC | UAUC | rounds | bytes up / client-round "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        eps = s["epsilon"]["max"]
        privacy = f"record-level ε {eps:.2f}, δ {s['delta']}" if s["dp"] else "none (ε = ∞)"
        statistics = s.get("item_statistics")
        if statistics and statistics["user_level_epsilon"] is not None:
            privacy += f" (with item statistics; alone: user-level ε {statistics['user_level_epsilon']:.2f})"
        per_round = s["bytes"]["up"] / (max(s["rounds"], 1) * clients)  # ease: its one exchange
        extra = f"| {s['rounds']} | {per_round:,.0f} | {s['seconds']:.0f} |"
        lines.append(metric_row(name, privacy, s["metrics"], extra))
    first = next(iter(summaries.values()))
    ranking, preference = first.get("ranking_baselines", {}), first.get("baselines", {})
    for name in sorted(set(ranking) | set(preference)):
        lines.append(
            metric_row(name, "none (central data)", ranking.get(name, {}) | preference.get(name, {}), "| - | - | - |")
        )
    lines += ["", "Paired differences on the same cases, model minus baseline (mean ± paired standard error):", ""]
    lines += ["| model | HR@10 − most-popular | NDCG@10 − most-popular | NDCG@10 − federated-mf (harness) |"]
    lines += ["|---|---|---|---|"]
    for name, s in summaries.items():
        paired = s.get("paired_differences", {})
        popular, federated = paired.get("most-popular", {}), paired.get("federated-mf", {})
        cells = [paired_cell(popular, "hr@10"), paired_cell(popular, "ndcg@10"), paired_cell(federated, "ndcg@10")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    users = first["metrics"].get("ranking_users")
    lines += [
        "",
        f"Ranking: {users} users, the last held-out liked item among {first.get('ranking_candidates')} candidates "
        "(HR@10, NDCG@10) and among every item the user did not rate (Recall@20; coverage@10: the share of the "
        "catalog in some user's top 10); "
        f"preference: {first['eval_examples']} held-out interactions (5 per user). ± is one standard error.",
        *paired_between_variants(summaries),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from the kept summaries")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="run only these; keep the rest")
    args = parser.parse_args()
    kept = {name: RESULTS / f"variant-{n}" / "summary.json" for n, name in enumerate(VARIANTS)}
    rerun = [] if args.report_only else (args.variants or list(VARIANTS))
    summaries = {name: json.loads(path.read_text()) for name, path in kept.items() if name not in rerun}
    base = {
        "recommender": "mf",
        "strategy": "fedavg",
        "num-clients": args.clients,
        "client-cpus": 1.0,
        "eval-users": 0,
        "test-interactions": 5,
        "ranking-users": 10_000,
        "max-weight": 100_000.0,  # a client holds up to ~13,000 likes (the weight of its update)
    }
    for n, (name, overrides) in enumerate(VARIANTS.items()):
        if name not in rerun:
            continue
        out = RUNS / f"variant-{n}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = resolve_config("demo", overrides=base | overrides | {"out": str(out)})
        _, summaries[name] = simulate(cfg, echo=None)
        kept = RESULTS / f"variant-{n}"
        kept.mkdir(parents=True, exist_ok=True)
        for name_ in ("summary.json", "rounds.jsonl", "config.toml"):
            shutil.copy(out / name_, kept / name_)
        shown = {k: v for k, v in summaries[name]["metrics"].items() if k != "ranks"}
        print(f"{name}: {json.dumps(shown)}", flush=True)
    summaries = {name: summaries[name] for name in VARIANTS}  # the table's order
    (RESULTS / "report.md").write_text(report(summaries, args.clients))
    print((RESULTS / "report.md").read_text())


if __name__ == "__main__":
    main()
