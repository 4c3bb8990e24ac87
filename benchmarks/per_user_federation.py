"""Per-user federation (issue #20): every MovieLens-100K user a client, user-level DP.

Each variant is one ``fedrec simulate`` run of federated MF on all 943 users, one client
each, Poisson-sampled every round, SecAgg+ with distributed client-level noise, federated
item statistics before round 1 and each client folding its user in before its BPR step;
user-level epsilon (the statistics and the rounds composed) below 8 at delta 1e-3. Then
:mod:`per_user_priors` weights the priors on validation and measures test once. The
report (``report.md``) and each run's config, summary, rounds and priors are written to
benchmarks/results/cross_device_scale/per_user/; about 80 minutes on a 2-core CPU.

    python benchmarks/per_user_federation.py                # every variant, then the report
    python benchmarks/per_user_federation.py --report-only  # the report from the kept files
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from fedrec.config import resolve_config
from fedrec.simulation.runner import simulate

RESULTS = Path(__file__).parent / "results" / "cross_device_scale" / "per_user"
RUNS = Path("runs") / "benchmark-per-user"
BASE = {
    "recommender": "mf",
    "strategy": "fedavg",
    "partitioner": "user",
    "num-clients": 943,
    "eval-users": 300,
    "ranking-users": 300,
    "test-interactions": 5,
    "validation-interactions": 5,
    "client-sampling": "poisson",
    "secure-aggregation": True,
    "client-dp": True,
    "client-dp-noise": "distributed",
    "client-dp-clip": 0.5,
    "dp": False,
    "target-delta": 0.001,
    "item-statistics": True,
    "mf-fold-in": True,
    "mf-popularity-weight": 1.0,
    "mf-like-rate-weight": 1.0,
    "mf-learning-rate": 5.0,
    "client-cpus": 1.0,
    "max-weight": 100_000.0,
}
VARIANTS = {
    "dim16-stats4": {"mf-dim": 16, "item-statistics-noise": 4.0, "fraction-train": 0.1}
    | {"client-dp-noise-multiplier": 0.9, "num-server-rounds": 100},
    "dim8-stats1.5": {"mf-dim": 8, "item-statistics-noise": 1.5, "fraction-train": 0.1}
    | {"client-dp-noise-multiplier": 0.9, "num-server-rounds": 100},
    "dim8-stats1.5-q0.2": {"mf-dim": 8, "item-statistics-noise": 1.5, "fraction-train": 0.2}
    | {"client-dp-noise-multiplier": 1.1, "num-server-rounds": 50},
    "dim16-stats1.5": {"mf-dim": 16, "item-statistics-noise": 1.5, "fraction-train": 0.1}
    | {"client-dp-noise-multiplier": 0.9, "num-server-rounds": 100},
}
SERVER_OPTIMIZERS = {  # the best variant's settings, another server optimizer
    "dim16-stats1.5-fedavgm": {"strategy": "fedavgm", "server-learning-rate": 0.5, "server-momentum": 0.9},
    "dim16-stats1.5-fedadam": {"strategy": "fedadam", "server-learning-rate": 0.01, "server-tau": 0.001},
}
VARIANTS |= {name: VARIANTS["dim16-stats1.5"] | settings for name, settings in SERVER_OPTIMIZERS.items()}
KEPT_FILES = ("config.toml", "summary.json", "rounds.jsonl", "item-statistics.json")


def cell(metrics: dict[str, Any], key: str) -> str:
    """A metric with its standard error, or '-'."""
    value, se = metrics.get(key), metrics.get(f"{key}_se")
    return "-" if value is None else f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")


def paired(report: dict[str, Any], other: str, key: str) -> str:
    """The model minus ``other`` on ``key``, with its paired standard error."""
    found = report["paired_differences"].get(other, {})
    return "-" if f"{key}_diff" not in found else f"{found[f'{key}_diff']:+.3f} ± {found[f'{key}_diff_se']:.3f}"


def variant_row(name: str, folder: Path) -> str:
    """One variant: its settings, guarantee, test metrics and paired differences."""
    summary = json.loads((folder / "summary.json").read_text())
    report = json.loads((folder / "priors.json").read_text())
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()][1:]
    sampled = sum(r["clients_sampled"] for r in rounds) / max(len(rounds), 1)
    rate = tomllib.loads((folder / "config.toml").read_text())["fraction-train"]
    test, weights = report["test"], report["weights"]
    alone = "federated popularity alone (private)"
    cells = [
        name,
        f"{rate} ({sampled:.0f})",
        str(summary["rounds"]),
        f"{summary['client_dp']['user_level_epsilon']:.2f}",
        f"{weights['popularity']:g} / {weights['like_rate']:g}",
        *(cell(test, key) for key in ("hr@10", "ndcg@10", "auc", "uauc")),
        paired(report, "most-popular", "hr@10"),
        paired(report, "most-popular", "ndcg@10"),
        paired(report, alone, "ndcg@10"),
        f"{summary['seconds']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def reference_rows(names: list[str]) -> list[str]:
    """The priors alone (each variant's statistics) and the harness's baselines, on the same split."""
    rows = []
    for variant in names:
        report = json.loads((RESULTS / variant / "priors.json").read_text())
        for name, m in report["references"].items():
            if variant != names[0] and "non-private" in name:
                continue  # the same in every variant
            label = name if "non-private" in name else f"{variant}: {name}"
            rows.append(f"| {label} | " + " | ".join(cell(m, k) for k in ("hr@10", "ndcg@10", "auc", "uauc")) + " |")
    ranking, preference = report["ranking_baselines"], report["baselines"]
    for name in sorted(set(ranking) | set(preference)):
        m = ranking.get(name, {}) | preference.get(name, {})
        label = f"{name} (harness baseline, non-private)"
        rows.append(f"| {label} | " + " | ".join(cell(m, k) for k in ("hr@10", "ndcg@10", "auc", "uauc")) + " |")
    return rows


def write_report(names: list[str]) -> str:
    """``report.md`` from the kept files of ``names``."""
    lines = [
        f"# Per-user federation: 943 clients, SecAgg+, user-level DP ({platform.machine()} CPU, 2 cores)",
        "",
        "| variant | q (clients per round) | rounds | user-level ε | weights popularity / like-rate | HR@10 "
        "| NDCG@10 | AUC | UAUC | HR@10 − most-popular | NDCG@10 − most-popular "
        "| NDCG@10 − federated popularity alone | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [variant_row(name, RESULTS / name) for name in names]
    lines += ["", "References on the same split (the private priors alone, from each variant's statistics):", ""]
    lines += ["| reference | HR@10 | NDCG@10 | AUC | UAUC |", "|---|---|---|---|---|", *reference_rows(names)]
    lines += [
        "",
        "Weights chosen on validation (popularity by NDCG@10, then like-rate by AUC), test measured once. "
        "Ranking: the last held-out liked item among 100 candidates; preference: 5 held-out interactions per "
        "evaluation user (300). ± is one standard error; differences are paired, per user.",
    ]
    return "\n".join(lines) + "\n"


def run_variant(name: str, overrides: dict[str, Any]) -> None:
    """Simulate one variant, keep its files, weight its priors."""
    out = RUNS / name
    shutil.rmtree(out, ignore_errors=True)
    simulate(resolve_config("demo", overrides=BASE | overrides | {"out": str(out)}), echo=None)
    kept = RESULTS / name
    kept.mkdir(parents=True, exist_ok=True)
    for file in KEPT_FILES:
        shutil.copy(out / file, kept / file)
    priors = Path(__file__).parent / "per_user_priors.py"
    subprocess.run([sys.executable, str(priors), str(out), "--out", str(kept)], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from the kept files")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="variants to run (default: all)")
    args = parser.parse_args()
    if not args.report_only:
        for name in args.variants:
            run_variant(name, VARIANTS[name])
    names = [name for name in VARIANTS if (RESULTS / name / "priors.json").exists()]
    (RESULTS / "report.md").write_text(write_report(names))
    print((RESULTS / "report.md").read_text())


if __name__ == "__main__":
    main()
