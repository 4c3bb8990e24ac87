"""The item-item model with every MovieLens-100K user a client, under user-level DP
(issue #20).

One ``fedrec simulate`` run: ``recommender = 'ease'``, ``partitioner = 'user'`` (943
clients, each holding one user's interactions), SecAgg+ over all of them, one exchange.
The bound and noise give user-level epsilon below 8 at delta 1e-3 (about 1/943): a user
moves the summed co-occurrence by at most ``bound sqrt((bound^2 + 1) / 2)`` (see
:mod:`fedrec.privacy.item_cooccurrence`), and the noise multiplier ``ease-noise`` is
relative to one rating's sensitivity, so the record-level epsilon (the ledger's) is lower
still. Evaluated on 300 users' held-out test interactions beside the baselines and the same
weights scored with every rating alike (no recency). Writes
the run's config, summary and rounds and ``report.md`` to
benchmarks/results/cross_device_scale/per_user_ease/.

    python benchmarks/per_user_ease.py
    python benchmarks/per_user_ease.py --clients 100   # a quicker, smaller federation
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedrec.config import FedRecConfig, resolve_config
from fedrec.server.models import central_split
from fedrec.simulation.runner import simulate
from fedrec.tasks.collaborative.evaluation import ItemItemEvaluator
from fedrec.tasks.collaborative.item_item import RECENCY, Recency
from fedrec.tasks.ranking.ranker import paired_differences

RESULTS = Path(__file__).parent / "results" / "cross_device_scale" / "per_user_ease"
RUNS = Path("runs") / "benchmark-per-user-ease"
# bound 3 (a user moves the sum by at most sqrt(45), one rating by 3): chosen on validation
# in a central simulation of the release at user-level epsilon 8 among bounds 2 to 5, when a
# user's sensitivity was taken as bound^2 = 9 (the noise then: std 4.92, now 3.66)
SETTINGS = {
    "recommender": "ease",
    "num-server-rounds": 0,
    "partitioner": "user",
    "secure-aggregation": True,
    "dp": True,
    "target-delta": 0.001,
    "ease-bound": 3.0,
    "ease-noise": 1.22,
    "eval-users": 300,
    "ranking-users": 300,
    "test-interactions": 5,
    "client-cpus": 1.0,
}


def every_rating_alike(cfg: FedRecConfig, weights_file: Path) -> dict[str, Any]:
    """The run's weights scored again with every rating alike (no recency): the same
    release, so the difference is what the users' recency weights add.
    """
    with np.load(weights_file) as stored:
        arrays = {name: stored[name] for name in stored.files} | {RECENCY: Recency().array()}
    central, cases = central_split(cfg)
    evaluator = ItemItemEvaluator(central, cfg.data.like_threshold, cases, cfg.evaluation.eval_split)
    return evaluator(ArrayRecord({name: Array(array) for name, array in arrays.items()}))


def report(summary: dict[str, Any], alike: dict[str, Any], clients: int) -> str:
    """The run's ranking metrics, its guarantees and bytes, beside the same release scored
    with every rating alike and the baselines.
    """
    metrics, ease = summary["metrics"], summary["ease"]
    rows = {"ease, every user a client": metrics, "the same release, every rating alike": alike}
    rows |= summary["ranking_baselines"]
    lines = [
        f"# The item-item model, {clients} clients (one user each), SecAgg+, {platform.machine()} CPU",
        "",
        f"User-level ε {ease['user_level_epsilon']:.2f} and record-level ε {summary['epsilon']['max']:.2f} at δ "
        f"{summary['delta']:g}; {ease['clients']} clients summed; bytes up per client "
        f"{summary['bytes']['up'] / clients:,.0f}; {summary['seconds']:.0f} s.",
        "",
        "| model | HR@10 | NDCG@10 | Recall@20 | coverage@10 |",
        "|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        cells = [f"{m[k]:.4f}" + (f" ± {m[k + '_se']:.4f}" if f"{k}_se" in m else "") for k in ("hr@10", "ndcg@10")]
        cells += [f"{m[k]:.4f}" if k in m else "-" for k in ("recall@20", "coverage@10")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired, ease minus each baseline (HR@10, NDCG@10):", ""]
    paired_rows = summary["paired_differences"] | {
        "the same release, every rating alike": paired_differences(metrics["ranks"], alike["ranks"])
    }
    for name, paired in paired_rows.items():
        lines.append(
            f"* {name}: {paired['hr@10_diff']:+.4f} ± {paired['hr@10_diff_se']:.4f}, "
            f"{paired['ndcg@10_diff']:+.4f} ± {paired['ndcg@10_diff_se']:.4f}"
        )
    users = metrics["ranking_users"]
    lines += ["", f"{users} ranked users (the last held-out liked item among 100 candidates); ± one standard error."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=943, help="users (one client each); 943: all of them")
    args = parser.parse_args()
    out = RUNS / f"clients-{args.clients}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = SETTINGS | {"num-clients": args.clients, "out": str(out)}
    if args.clients < 943:
        overrides["max-users"] = args.clients
    cfg = resolve_config("demo", overrides=overrides)
    _, summary = simulate(cfg, echo=None)
    alike = every_rating_alike(cfg, out / "item-weights.npz")
    kept = RESULTS / f"clients-{args.clients}"
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "rounds.jsonl", "config.toml"):
        shutil.copy(out / name, kept / name)
    (kept / "report.md").write_text(report(summary, alike, args.clients))
    print((kept / "report.md").read_text())
    print(json.dumps(summary["ease"]))


if __name__ == "__main__":
    main()
