"""Running a benchmark suite: several runs on the same data, seeds and budget, one table.

Each point of a suite is an ordinary run folder (see :mod:`fedrec.server.results`) under
``--out``; a point whose folder already holds ``summary.json`` is not run again, and an
interrupted one resumes from its checkpoint, so a suite restarted with the same ``--out``
continues where it stopped. ``report.md`` and ``results.json`` summarise every point.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from ..config import resolve_config
from ..files import write_atomic
from ..server.checkpoint import CHECKPOINT_DIR
from ..server.models import MODEL_FILES
from ..server.results import json_safe
from ..simulation.runner import resume, simulate
from .report import main_table, render_report, row, write_plots
from .suites import SUITES, Point, Suite


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
                cfg = resolve_config(suite.preset, overrides=point_overrides(suite, point, out))
                simulate(cfg)
            run_seconds.append(time.perf_counter() - started)
        else:
            print(f"{head} (done before, kept)", flush=True)
        rows.append(row(point, folder))
    results = {"suite": name, "description": suite.description, "machine": platform.machine(), "rows": rows}
    write_atomic(out / "results.json", json.dumps(json_safe(results), indent=2) + "\n")
    write_plots(rows, out / "plots")
    report = out / "report.md"
    write_atomic(report, render_report(results))
    print(main_table(rows))
    return report


EVAL_PREFIX_STORE = "prefix-store"  # under a suite's --out: the central evaluations' frozen states, shared


def point_overrides(suite: Suite, point: Point, out: Path) -> dict[str, Any]:
    """A point's config keys: the suite's base, the point's own, its run folder under
    ``out``, the evaluation's prefix store shared by the points (same split, same
    backbone: an LLM's evaluation prompts run through the frozen layers once per suite)
    and, when it reads an earlier point's model (mf tables or ease weights), that run's file.
    """
    overrides = {**suite.base, **point.overrides, "out": str(out / _slug(point.label))}
    overrides["eval-prefix-store"] = str(out / EVAL_PREFIX_STORE)
    if point.item_tables_from:
        source = next(p for p in suite.points if p.label == point.item_tables_from)
        recommender = {**suite.base, **source.overrides}.get("recommender", "mf")
        overrides["item-tables"] = str(out / _slug(point.item_tables_from) / MODEL_FILES[recommender])
    return overrides


def eta_note(run_seconds: list[float], remaining: int) -> str:
    """``(elapsed, about N min left)`` from the points run so far; empty before the first."""
    if not run_seconds:
        return ""
    left = sum(run_seconds) / len(run_seconds) * remaining
    return f" ({sum(run_seconds) / 60:.1f} min so far, about {left / 60:.0f} min left)"
