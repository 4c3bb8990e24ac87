"""Benchmark suites: several runs on the same data, seeds and budget, one table.

Each point of a suite is an ordinary run folder (design §7) under ``--out``; a point
whose folder already holds ``summary.json`` is not run again, so an interrupted suite
restarted with the same ``--out`` continues where it stopped. ``report.md`` and
``results.json`` summarise every point.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import resolve_config
from .runner import simulate


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
    # For tests: the tiny random model, seconds per point.
    "strategies-smoke": Suite(
        preset="smoke",
        base={"num-server-rounds": 1},
        points=(
            Point("FedAvg-LoRA", {"strategy": "fedavg"}),
            Point("FFA-LoRA, client-level DP", {"strategy": "ffa-lora", "client-dp": True}),
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
    rows = []
    for i, point in enumerate(suite.points, 1):
        folder = out / _slug(point.label)
        if not (folder / "summary.json").exists():
            print(f"[fedrec benchmark] {i}/{len(suite.points)}: {point.label}", flush=True)
            cfg = resolve_config(suite.preset, overrides={**suite.base, **point.overrides, "out": str(folder)})
            simulate(cfg)
        else:
            print(f"[fedrec benchmark] {i}/{len(suite.points)}: {point.label} (done before, kept)", flush=True)
        rows.append(_row(point, folder))
    results = {"suite": name, "description": suite.description, "machine": platform.machine(), "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = out / "report.md"
    report.write_text(render_report(results))
    print(strategy_table(rows))
    return report


def _row(point: Point, folder: Path) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()][1:]
    client_rounds = sum(r["clients_sampled"] for r in rounds)
    client_dp = summary.get("client_dp")
    return {
        "method": point.label,
        "folder": folder.name,
        "overrides": dict(point.overrides),
        "auc": summary["metrics"]["auc"],
        "initial_auc": summary["initial_metrics"]["auc"],
        "epsilon": summary["epsilon"]["max"] if summary["dp"] else None,
        "client_epsilon": client_dp["epsilon"] if client_dp else None,
        "bytes_up_per_client_round": summary["bytes"]["up"] / client_rounds if client_rounds else 0,
        "bytes_total": summary["bytes"]["total"],
        "adapter_to_full_model": summary["bytes"]["adapter_to_full_model"],
        "seconds": summary["seconds"],
        "baselines": summary["baselines"],
    }


def _cell(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def strategy_table(rows: list[Mapping[str, Any]]) -> str:
    """The main table, in Markdown."""
    lines = [
        "| method | final AUC | round-0 AUC | record-level ε | client-level ε | bytes up / client-round "
        "| bytes total | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['auc']:.4f} | {r['initial_auc']:.4f} | {_cell(r['epsilon'], '.2f', '∞')} "
            f"| {_cell(r['client_epsilon'], '.2f', '∞')} | {r['bytes_up_per_client_round']:,.0f} "
            f"| {r['bytes_total']:,} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md``: the table, the baselines on the same split, and the runs."""
    rows = results["rows"]
    baselines = rows[0]["baselines"] if rows else {}
    lines = [
        f"# fedrec benchmark: {results['suite']}",
        "",
        f"{results['description']}; machine {results['machine']}. AUC on the same held-out interactions for "
        "every row; epsilon at delta 1e-5 (record-level: Opacus per client, max over clients; client-level: "
        "the server's RDP accountant); ∞ = no DP of that kind.",
        "",
        strategy_table(rows),
        "",
        "Baselines on the same held-out interactions (no training, no privacy cost): "
        + ", ".join(f"{name} {auc:.4f}" for name, auc in baselines.items()),
        "",
        "Run folders (config.toml, rounds.jsonl, summary.json, adapter/, plots/): "
        + ", ".join(f"`{r['folder']}`" for r in rows),
        "",
    ]
    return "\n".join(lines)
