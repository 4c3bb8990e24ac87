"""Settings of the private retriever (federated MF at record-level epsilon 8, the rerank
suite's first point) compared on the validation split over several seeds.

One draw of DP-SGD's noise moves HR@10 by a few hundredths, so a setting is run with
each seed (the seed draws the split, the partitions and the noise) and compared with
the defaults on the same cases: the per-user differences of all seeds pooled, with
their paired standard error. Each run is ``fedrec simulate`` on the demo's 2 clients,
SecAgg+, every user evaluated with 5 validation interactions held out (never test),
and every user whose last validation interaction is a like ranked among 100 candidates.
Finished runs are kept and skipped. Report: benchmarks/results/mf_dp_sweep/report.md.

    python benchmarks/mf_dp_sweep.py                      # every setting, seeds 42 and 1
    python benchmarks/mf_dp_sweep.py --variants "dim 8" --seeds 42 1 2
    python benchmarks/mf_dp_sweep.py --variants "popularity 0.5" "popularity 1" \
        --reference "2 local epochs, lr 200, dim 8" --report report-popularity.md
    python benchmarks/mf_dp_sweep.py --variants "ease, l2 1000" "ease, bound 5" "ease, bound 12" "ease, bound 16" \
        "ease, rank 32" "ease, l2 300 (likes only, the defaults until report-ease-dislikes.md)" \
        "ease, no projection, l2 3000" "ease without DP, l2 200" "ease without DP, l2 500" \
        "ease without DP, l2 1000" --reference "2 local epochs, lr 200, dim 8" --report report-ease.md
    python benchmarks/mf_dp_sweep.py --variants "ease, dislikes at 0.25" "ease, dislikes at 0.5" \
        "ease, dislikes at 1" "ease, dislikes at 0.5, bound 10" "ease without DP, dislikes at 0.5" \
        --reference "ease, l2 300 (likes only, the defaults until report-ease-dislikes.md)" \
        --report report-ease-dislikes.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import resolve_config
from fedrec.simulation.runner import simulate
from fedrec.tasks.metrics import hit_rate_at_k, mean_and_standard_error, ndcg_at_k
from fedrec.tasks.ranking.ranker import K

RESULTS = Path(__file__).parent / "results" / "mf_dp_sweep"
RUNS = Path("runs") / "benchmark-mf-dp-sweep"  # whole run folders (not committed)
BASE = {
    "recommender": "mf",
    "strategy": "fedavg",
    "num-server-rounds": 10,
    "client-cpus": 1.0,
    "max-weight": 100_000.0,
    "eval-users": 0,
    "test-interactions": 5,
    "validation-interactions": 5,
    "eval-split": "validation",
    "ranking-users": 10_000,
}
METRICS = ("hr@10", "ndcg@10")
DEFAULTS = "defaults (dim 16, lr 100, batch 2048, clip 0.5, 10 rounds, 1 epoch)"
OLD_DEFAULTS = {"mf-dim": 16, "mf-learning-rate": 100.0, "mf-local-epochs": 1}  # before the sweep
NEW_DEFAULTS = "2 local epochs, lr 200, dim 8"  # the sweep's choice, fedrec's defaults since
POPULARITY_WEIGHTS = (0.25, 0.5, 1.0, 2.0)
VARIANTS: dict[str, dict[str, Any]] = {
    DEFAULTS: OLD_DEFAULTS,
    "dim 8": OLD_DEFAULTS | {"mf-dim": 8},
    "dim 32": OLD_DEFAULTS | {"mf-dim": 32},
    "lr 50": OLD_DEFAULTS | {"mf-learning-rate": 50.0},
    "lr 200": OLD_DEFAULTS | {"mf-learning-rate": 200.0},
    "batch 4096": OLD_DEFAULTS | {"mf-batch-size": 4096},
    "clip 1": OLD_DEFAULTS | {"mf-max-grad-norm": 1.0},
    "20 rounds": OLD_DEFAULTS | {"num-server-rounds": 20},
    "2 local epochs": OLD_DEFAULTS | {"mf-local-epochs": 2},
    "4 local epochs": OLD_DEFAULTS | {"mf-local-epochs": 4},
    "2 local epochs, 20 rounds": OLD_DEFAULTS | {"mf-local-epochs": 2, "num-server-rounds": 20},
    NEW_DEFAULTS: {"mf-local-epochs": 2, "mf-learning-rate": 200.0, "mf-dim": 8},
} | {  # the new defaults plus w * log(1 + federated rating count), the counts' release composed into epsilon 8
    f"popularity {w:g}": {"item-statistics": True, "mf-popularity-weight": w} for w in POPULARITY_WEIGHTS
}
# the first ease sweep (report-ease.md) fitted the co-occurrence of likes only, epsilon 7.97
EASE = {"recommender": "ease", "num-server-rounds": 0, "ease-dislike-weight": 0.0}
FIRST_EASE = EASE | {"ease-l2": 1000.0}  # bound 8, rank 16 (the defaults) with l2 1000, the first choice
VARIANTS |= (
    {
        "ease, l2 1000": FIRST_EASE,
        "ease, bound 5": FIRST_EASE | {"ease-bound": 5.0},
        "ease, bound 12": FIRST_EASE | {"ease-bound": 12.0},
        "ease, bound 16": FIRST_EASE | {"ease-bound": 16.0},
        "ease, rank 32": FIRST_EASE | {"ease-rank": 32},
        "ease, l2 300 (likes only, the defaults until report-ease-dislikes.md)": EASE,
        "ease, no projection, l2 3000": EASE | {"ease-rank": 0, "ease-l2": 3000.0},
    }
    | {  # without DP (epsilon infinite): no bound, no projection
        f"ease without DP, l2 {l2:g}": EASE
        | {"dp": False, "ease-noise": 0.0, "ease-bound": 1000.0, "ease-rank": 0}
        | {"ease-l2": l2}
        for l2 in (200.0, 500.0, 1000.0)
    }
    | {  # the second (report-ease-dislikes.md): rated items the user does not like enter at a weight
        f"ease, dislikes at {w:g}": EASE | {"ease-dislike-weight": w} for w in (0.25, 0.5, 1.0)
    }
    | {
        "ease, dislikes at 0.5, bound 10": EASE | {"ease-dislike-weight": 0.5, "ease-bound": 10.0},
        "ease without DP, dislikes at 0.5": EASE
        | {"ease-dislike-weight": 0.5, "dp": False, "ease-noise": 0.0, "ease-bound": 1000.0, "ease-rank": 0},
    }
)


def run_folder(name: str, seed: int) -> Path:
    """Where a variant's run with ``seed`` is kept."""
    slug = "".join(c if c.isalnum() else "-" for c in name.split(" (")[0]).strip("-")
    return RESULTS / f"{slug}-seed-{seed}"


def run(name: str, seed: int) -> dict[str, Any]:
    """The variant's summary with ``seed``: kept, or run now (its files kept)."""
    kept = run_folder(name, seed)
    if (kept / "summary.json").exists():
        return json.loads((kept / "summary.json").read_text())
    out = RUNS / kept.name
    shutil.rmtree(out, ignore_errors=True)
    cfg = resolve_config("demo", overrides=BASE | VARIANTS[name] | {"seed": seed, "out": str(out)})
    _, summary = simulate(cfg, echo=None)
    kept.mkdir(parents=True, exist_ok=True)
    for file in ("summary.json", "rounds.jsonl", "config.toml"):
        shutil.copy(out / file, kept / file)
    return summary


def per_user_gains(runs: dict[int, dict[str, Any]], seeds: list[int]) -> dict[str, np.ndarray]:
    """Each ranked user's HR@10 and NDCG@10 averaged over the seeds (the same users and
    liked items in every seed; the seed draws the negatives, the partitions and the noise).
    """
    ranks = [runs[seed]["metrics"]["ranks"] for seed in seeds]
    per_seed = {
        "hr@10": [[hit_rate_at_k([r], K) for r in seed_ranks] for seed_ranks in ranks],
        "ndcg@10": [[ndcg_at_k([r], K) for r in seed_ranks] for seed_ranks in ranks],
    }
    return {metric: np.mean(values, axis=0) for metric, values in per_seed.items()}


def paired_cells(gains: dict[str, np.ndarray], reference: dict[str, np.ndarray], per_seed: str) -> str:
    """A table row's metric cells: each of :data:`METRICS` per user (mean ± standard error),
    ``per_seed``, then each paired against ``reference``.
    """
    cells = [mean_and_standard_error(gains[m]) for m in METRICS]
    diffs = [mean_and_standard_error(gains[m] - reference[m]) for m in METRICS]
    return (
        " | ".join(f"{m:.4f} ± {se:.4f}" for m, se in cells)
        + f" | {per_seed} | "
        + " | ".join(f"{m:+.4f} ± {se:.4f}" for m, se in diffs)
    )


def report(summaries: dict[str, dict[int, dict[str, Any]]], seeds: list[int], reference_name: str) -> str:
    """Each variant's HR@10 and NDCG@10 and its paired difference to ``reference_name``, per user over the seeds."""
    reference = per_user_gains(summaries[reference_name], seeds)
    against = "defaults" if reference_name == DEFAULTS else reference_name
    lines = [
        f"# Private retriever settings on validation ({platform.machine()} CPU, seeds {', '.join(map(str, seeds))})",
        "",
        f"| setting | record-level ε | HR@10 | NDCG@10 | HR@10 per seed | HR@10 − {against} | NDCG@10 − {against} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in summaries.items():
        per_seed = " / ".join(f"{runs[seed]['metrics']['hr@10']:.3f}" for seed in seeds)
        spent = [runs[seed]["epsilon"]["max"] for seed in seeds]
        epsilon = f"{max(spent):.2f}" if None not in spent else "∞"  # None: no DP
        lines.append(f"| {name} | {epsilon} | {paired_cells(per_user_gains(runs, seeds), reference, per_seed)} |")
    popular = " / ".join(
        f"{s['ranking_baselines']['most-popular']['hr@10']:.3f}" for s in summaries[reference_name].values()
    )
    lines += [
        "",
        f"{len(reference['hr@10'])} ranked users (the last liked validation interaction among 100 candidates), each "
        "user's metric averaged over the seeds; ± is one standard error over the users (paired for the "
        f"differences). Non-private most-popular HR@10 on the same cases, per seed: {popular}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--reference", default=DEFAULTS, choices=list(VARIANTS), help="the paired differences' base")
    parser.add_argument("--report", default="report.md", help="file name in benchmarks/results/mf_dp_sweep/")
    args = parser.parse_args()
    names = [args.reference, *(name for name in args.variants if name != args.reference)]
    summaries: dict[str, dict[int, dict[str, Any]]] = {}
    for name in names:
        summaries[name] = {}
        for seed in args.seeds:
            summaries[name][seed] = run(name, seed)
            print(f"{name}, seed {seed}: HR@10 {summaries[name][seed]['metrics']['hr@10']:.4f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.report).write_text(report(summaries, args.seeds, args.reference))
    print((RESULTS / args.report).read_text())


if __name__ == "__main__":
    main()
