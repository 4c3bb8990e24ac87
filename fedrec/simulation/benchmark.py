"""Benchmark suites: several runs on the same data, seeds and budget, one table.

Each point of a suite is an ordinary run folder (design §7) under ``--out``; a point
whose folder already holds ``summary.json`` is not run again, and an interrupted one
resumes from its checkpoint, so a suite restarted with the same ``--out`` continues
where it stopped. ``report.md`` and
``results.json`` summarise every point.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import resolve_config
from ..files import write_atomic
from ..server.checkpoint import CHECKPOINT_DIR
from ..server.results import json_safe
from .runner import resume, simulate


@dataclass(frozen=True)
class Point:
    """One run of a suite: a label and its config keys over the suite's base."""

    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A preset, keys shared by every point, and the points."""

    preset: str
    base: Mapping[str, Any]
    points: tuple[Point, ...]
    description: str


NON_PRIVATE_LEARNING_RATE = 0.03  # the demo's 0.3 is tuned for noisy DP steps; without noise it diverges


def _with_and_without_dp(label: str, overrides: Mapping[str, Any]) -> tuple[Point, Point]:
    non_private = {**overrides, "dp": False, "learning-rate": NON_PRIVATE_LEARNING_RATE}
    return Point(f"{label}, no DP", non_private), Point(f"{label}, DP", dict(overrides))


_STRATEGY_POINTS = (
    ("FedAvg-LoRA", {"strategy": "fedavg"}),
    ("FFA-LoRA", {"strategy": "ffa-lora"}),
    ("FedAdam (B only)", {"strategy": "fedadam", "lora-freeze-a": True}),
    ("FFA-LoRA ranks 2,4", {"strategy": "ffa-lora", "lora-ranks": "2,4"}),
)

_CPU_BASE = {"max-users": 300, "batch-size": 60, "ranking-users": 20}
_PER_USER = {
    "partitioner": "user",
    "num-clients": 300,
    "fraction-train": 0.1,
    "dp": False,
    "learning-rate": NON_PRIVATE_LEARNING_RATE,
}

SUITES: dict[str, Suite] = {
    # CPU-sized: the demo (SmolLM2-135M, MovieLens-100K, 2 clients, 5 rounds, record-level
    # epsilon 8, SecAgg+) on the first 300 users, batch 60 (sampling rate ~0.13).
    "strategies": Suite(
        preset="demo",
        base={"max-users": 300, "batch-size": 60},
        points=(
            *(p for label, o in _STRATEGY_POINTS for p in _with_and_without_dp(label, o)),
            Point(
                "FFA-LoRA, DP + client-level DP (distributed)",
                {
                    "strategy": "ffa-lora",
                    "client-dp": True,
                    "client-dp-clip": 0.5,
                    "client-dp-noise-multiplier": 0.5,
                    "client-dp-noise": "distributed",
                },
            ),
        ),
        description="demo preset on 300 users (CPU-sized)",
    ),
    # Privacy-utility on the 2-core CPU: the demo's FFA-LoRA at record-level epsilon 1, 3, 8
    # and without DP, a centralized non-private LoRA (one client holding every user), and
    # 4 clients at epsilon 8; preference AUC each round, HR@10/NDCG@10 of 20 users (100
    # candidates each) at rounds 0 and 5.
    "cpu": Suite(
        preset="demo",
        base=_CPU_BASE,
        points=(
            Point("FFA-LoRA, epsilon 1", {"target-epsilon": 1.0}),
            Point("FFA-LoRA, epsilon 3", {"target-epsilon": 3.0}),
            Point("FFA-LoRA, epsilon 8", {"target-epsilon": 8.0}),
            Point("FFA-LoRA, no DP", {"dp": False, "learning-rate": NON_PRIVATE_LEARNING_RATE}),
            Point(
                "centralized LoRA, no DP",
                {
                    "num-clients": 1,
                    "dp": False,
                    "learning-rate": NON_PRIVATE_LEARNING_RATE,
                    "secure-aggregation": False,
                },
            ),
            Point("FFA-LoRA, epsilon 8, 4 clients", {"num-clients": 4}),
        ),
        description="demo preset on 300 users, ranking on 20 of them (CPU-sized)",
    ),
    # The other sweeps of the CPU-sized setting: clients per round (8 clients, batch 15 so
    # the sampling rate stays ~0.13), per-user clients (each user's device is a client;
    # client-level DP is then user-level DP) against the grouped reference, and LoRA rank.
    # The first two points ran with ranking (the suite skips finished points).
    "sweeps": Suite(
        preset="demo",
        base={**_CPU_BASE, "ranking-users": 0},  # AUC only: ranking costs more than the rounds on 2 cores
        points=(
            Point("2 clients, epsilon 8 (reference)", {}),
            *(
                Point(
                    f"8 clients, {n} per round, epsilon 8",
                    {"num-clients": 8, "batch-size": 15, "fraction-train": n / 8},
                )
                for n in (8, 4, 2)
            ),
            Point("per-user clients, 30 per round, no DP", _PER_USER),
            Point(
                "per-user clients, 30 per round, user-level DP",
                {**_PER_USER, "client-dp": True, "client-dp-clip": 0.5, "client-dp-noise-multiplier": 1.0},
            ),
            *(Point(f"LoRA rank {rank}, epsilon 8", {"lora-rank": rank, "lora-alpha": 2.0 * rank}) for rank in (8, 32)),
        ),
        description="demo preset on 300 users: clients per round, per-user clients, LoRA rank (CPU-sized)",
    ),
    # For tests: the tiny random model, two methods x two epsilons, seconds per point.
    "smoke": Suite(
        preset="smoke",
        base={"num-server-rounds": 1, "ranking-users": 4},
        points=(
            Point("FedAvg-LoRA, epsilon 50", {"strategy": "fedavg"}),
            Point("FedAvg-LoRA, no DP", {"strategy": "fedavg", "dp": False}),
            Point("FFA-LoRA, epsilon 50, client-level DP", {"strategy": "ffa-lora", "client-dp": True}),
            Point("FFA-LoRA, no DP", {"strategy": "ffa-lora", "dp": False}),
        ),
        description="tiny random model (tests)",
    ),
}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def run_suite(name: str, out: str | Path) -> Path:
    """Run (or continue) suite ``name`` under ``out``; returns ``report.md``'s path."""
    if name not in SUITES:
        raise ValueError(f"unknown suite '{name}' (choose from {', '.join(SUITES)})")
    suite, out = SUITES[name], Path(out).expanduser().resolve()
    rows, run_seconds = [], []
    for i, point in enumerate(suite.points, 1):
        folder = out / _slug(point.label)
        head = f"[fedrec benchmark] {i}/{len(suite.points)}: {point.label}"
        if not (folder / "summary.json").exists():
            started = time.perf_counter()
            if (folder / CHECKPOINT_DIR).exists():  # interrupted: continue from its last round
                print(f"{head} (resumed){eta_note(run_seconds, len(suite.points) - i + 1)}", flush=True)
                resume(folder)
            else:
                print(f"{head}{eta_note(run_seconds, len(suite.points) - i + 1)}", flush=True)
                cfg = resolve_config(suite.preset, overrides={**suite.base, **point.overrides, "out": str(folder)})
                simulate(cfg)
            run_seconds.append(time.perf_counter() - started)
        else:
            print(f"{head} (done before, kept)", flush=True)
        rows.append(_row(point, folder))
    results = {"suite": name, "description": suite.description, "machine": platform.machine(), "rows": rows}
    write_atomic(out / "results.json", json.dumps(json_safe(results), indent=2) + "\n")
    write_plots(rows, out / "plots")
    report = out / "report.md"
    write_atomic(report, render_report(results))
    print(main_table(rows))
    return report


def eta_note(run_seconds: list[float], remaining: int) -> str:
    """``(elapsed, about N min left)`` from the points run so far; empty before the first."""
    if not run_seconds:
        return ""
    left = sum(run_seconds) / len(run_seconds) * remaining
    return f" ({sum(run_seconds) / 60:.1f} min so far, about {left / 60:.0f} min left)"


def _row(point: Point, folder: Path) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    client_rounds = sum(r["clients_sampled"] for r in rounds[1:])
    client_dp = summary.get("client_dp")
    final = summary["metrics"]
    return {
        "method": point.label,
        "folder": folder.name,
        "overrides": dict(point.overrides),
        "auc": final["auc"],
        "initial_auc": summary["initial_metrics"]["auc"],
        "hr@10": final.get("hr@10"),
        "ndcg@10": final.get("ndcg@10"),
        "epsilon": summary["epsilon"]["max"] if summary["dp"] else None,
        "client_epsilon": client_dp["epsilon"] if client_dp else None,
        "bytes_up_per_client_round": summary["bytes"]["up"] / client_rounds if client_rounds else 0,
        "bytes_total": summary["bytes"]["total"],
        "adapter_to_full_model": summary["bytes"]["adapter_to_full_model"],
        "seconds": summary["seconds"],
        "auc_by_round": [r.get("auc") for r in rounds],
        "bytes_up_by_round": [r["bytes_up"] for r in rounds],
        "baselines": summary["baselines"],
        "ranking_baselines": summary.get("ranking_baselines", {}),
        "ranking_users": final.get("ranking_users"),
    }


def _cell(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def main_table(rows: list[Mapping[str, Any]]) -> str:
    """The main table, in Markdown."""
    lines = [
        "| method | AUC | round-0 AUC | HR@10 | NDCG@10 | record-level ε | client-level ε "
        "| bytes up / client-round | bytes total | adapter / backbone | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['auc']:.4f} | {r['initial_auc']:.4f} | {_cell(r['hr@10'], '.3f')} "
            f"| {_cell(r['ndcg@10'], '.3f')} | {_cell(r['epsilon'], '.2f', '∞')} "
            f"| {_cell(r['client_epsilon'], '.2f', '∞')} | {r['bytes_up_per_client_round']:,.0f} "
            f"| {r['bytes_total']:,} | {r['adapter_to_full_model']:.4%} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md``: the main table, the baselines on the same split, plots and runs."""
    rows = results["rows"]
    lines = [
        f"# fedrec benchmark: {results['suite']}",
        "",
        f"{results['description']}; machine {results['machine']}. Every row is evaluated on the same held-out "
        "interactions (AUC) and ranking cases (HR@10, NDCG@10: the held-out liked item among 99 unrated ones); "
        "epsilon at delta 1e-5 (record-level: Opacus per client, max over clients; client-level: the server's "
        "RDP accountant); ∞ = no DP of that kind.",
        "",
        main_table(rows),
        "",
    ]
    if rows:
        lines += [
            "Preference baselines (AUC; no training, no privacy cost): "
            + ", ".join(f"{name} {auc:.4f}" for name, auc in rows[0]["baselines"].items()),
            "",
        ]
        if rows[0]["ranking_baselines"]:
            lines += ["| ranking baseline | HR@10 | NDCG@10 |", "|---|---|---|"]
            lines += [
                f"| {name} | {m['hr@10']:.3f} | {m['ndcg@10']:.3f} |"
                for name, m in rows[0]["ranking_baselines"].items()
            ]
            lines.append("")
    lines += [
        "Plots: `plots/accuracy_vs_epsilon.png`, `plots/accuracy_vs_round.png`, `plots/bytes_per_round.png`.",
        "",
        "Run folders (config.toml, rounds.jsonl, summary.json, adapter/, plots/): "
        + ", ".join(f"`{r['folder']}`" for r in rows),
        "",
    ]
    return "\n".join(lines)


def write_plots(rows: list[Mapping[str, Any]], folder: Path) -> list[Path]:
    """Accuracy vs epsilon, accuracy vs round and bytes per round of every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    private = [r for r in rows if r["epsilon"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epsilon"] for r in private], [r["auc"] for r in private], "o", label="AUC")
    if any(r["hr@10"] is not None for r in private):
        ax.plot([r["epsilon"] for r in private], [r["hr@10"] for r in private], "s", label="HR@10")
    for r in rows:
        if r["epsilon"] is None:
            ax.axhline(r["auc"], linestyle="--", linewidth=0.8, label=f"{r['method']} (AUC, no record-level DP)")
    ax.set(xlabel="record-level epsilon (max over clients)", ylabel="accuracy", title="accuracy vs epsilon")
    ax.legend(fontsize=6)
    written.append(_save(fig, folder / "accuracy_vs_epsilon.png"))
    for key, name, label in (
        ("auc_by_round", "accuracy_vs_round.png", "AUC"),
        ("bytes_up_by_round", "bytes_per_round.png", "bytes up"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.plot(range(len(r[key])), r[key], marker="o", label=r["method"])
        ax.set(xlabel="round", ylabel=label, title=f"{label} per round")
        ax.legend(fontsize=6)
        written.append(_save(fig, folder / name))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
