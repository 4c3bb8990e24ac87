"""The item-item model with every MovieLens-100K user a client, under user-level DP
(issue #20).

One ``fedrec simulate`` run: ``recommender = 'ease'``, ``partitioner = 'user'`` (943
clients, each holding one user's interactions), SecAgg+ over all of them, one exchange.
The bound and noise give user-level epsilon below 8 at delta 1e-3 (about 1/943): a user
moves the summed co-occurrence by at most ``bound^2`` (see
:mod:`fedrec.privacy.item_cooccurrence`), and the noise multiplier ``ease-noise`` is
relative to one like's sensitivity, so the record-level epsilon (the ledger's) is lower
still. Evaluated on 300 users' held-out test interactions beside the baselines. Writes
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

from fedrec.config import resolve_config
from fedrec.simulation.runner import simulate

RESULTS = Path(__file__).parent / "results" / "cross_device_scale" / "per_user_ease"
RUNS = Path("runs") / "benchmark-per-user-ease"
# bound 3 (a user moves the sum by at most 9, one like by sqrt(20)): chosen on validation in
# a central simulation of the release at user-level epsilon 8 among bounds 2 to 5
SETTINGS = {
    "recommender": "ease",
    "num-server-rounds": 0,
    "partitioner": "user",
    "secure-aggregation": True,
    "dp": True,
    "target-delta": 0.001,
    "ease-bound": 3.0,
    "ease-noise": 1.1,
    "eval-users": 300,
    "ranking-users": 300,
    "test-interactions": 5,
    "client-cpus": 1.0,
}


def report(summary: dict[str, Any], clients: int) -> str:
    """The run's ranking and preference metrics, its guarantees and bytes, beside the baselines."""
    metrics, ease = summary["metrics"], summary["ease"]
    rows = {"ease, every user a client": metrics} | summary["ranking_baselines"]
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
    for name, paired in summary["paired_differences"].items():
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
    _, summary = simulate(resolve_config("demo", overrides=overrides), echo=None)
    kept = RESULTS / f"clients-{args.clients}"
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "rounds.jsonl", "config.toml"):
        shutil.copy(out / name, kept / name)
    (kept / "report.md").write_text(report(summary, args.clients))
    print((kept / "report.md").read_text())
    print(json.dumps(summary["ease"]))


if __name__ == "__main__":
    main()
