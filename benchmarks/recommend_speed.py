"""On-device recommendation time for one user: the LLM over the whole catalog, against
retrieval with a collaborative run's item tables followed by an LLM rerank of the top N.

The LLM is the demo's (SmolLM2-135M, its adapter shape: FFA-LoRA rank 2 on the top 2
layers, bfloat16 forward); without ``--adapter`` an adapter of that shape with seeded
random B is written first (the time does not depend on its values). The history is a
handful of well-known science-fiction and action films. Each path runs ``--repeats``
times in one process, alternating; the report gives the median seconds and the ratio.
With ``--cold`` each path is instead the whole ``fedrec recommend`` command in a fresh
process (interpreter start, imports, loading the backbone and the retriever's file),
what a user waits for; written to ``recommend_speed_cold.json``.

    python benchmarks/recommend_speed.py --item-tables runs/<mf run>/item-tables.npz
    python benchmarks/recommend_speed.py --item-tables runs/<ease run>/item-weights.npz --cold
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import tomli_w
import torch

from fedrec.client.recommend import recommend
from fedrec.config import resolve_config
from fedrec.models.adapter import save_adapter
from fedrec.tasks.preference.scoring import scorer_for

RESULTS = Path(__file__).parent / "results" / "recommend_speed.json"
COLD_RESULTS = Path(__file__).parent / "results" / "recommend_speed_cold.json"
# Star Wars, Terminator 2, The Terminator, Aliens, Alien, Die Hard, Return of the Jedi
HISTORY = pd.DataFrame({"item": ["50", "96", "195", "176", "183", "144", "181"], "rating": [5, 5, 4, 5, 4, 5, 4]})


def demo_adapter(folder: Path) -> Path:
    """A run folder with the demo's config and an adapter of its shape (seeded random B)."""
    cfg = resolve_config("demo")
    scorer = scorer_for(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in scorer.peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    (folder / "config.toml").write_text(tomli_w.dumps(cfg.to_run_config()))
    return save_adapter(scorer, folder / "adapter")


def command(history: Path, item_tables: str, adapter: Path | None, candidates: int) -> Callable[[], list[str]]:
    """``fedrec recommend`` for ``history`` in a fresh process; returns its top 10 lines."""
    fedrec = str(Path(sys.executable).parent / "fedrec")  # the console script a user runs
    args = [fedrec, "recommend", "--history", str(history), "--item-tables", item_tables]
    if adapter is not None:
        args += ["--adapter", str(adapter), "--candidates", str(candidates)]

    def run() -> list[str]:
        done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300)
        return done.stdout.strip().splitlines()[-10:]

    return run


def in_process(adapter: Path, item_tables: str, rerank: list[int], full_catalog: bool) -> dict[str, Callable]:
    """The paths as calls of :func:`recommend` in this process (the backbone loaded once)."""
    paths: dict[str, Callable] = {"retrieve only": lambda: recommend(None, HISTORY, 10, item_tables=item_tables)}
    for n in rerank:
        paths[f"retrieve + LLM rerank {n}"] = lambda n=n: recommend(
            adapter, HISTORY, 10, candidates=n, item_tables=item_tables
        )
    if full_catalog:
        paths["LLM, whole catalog"] = lambda: recommend(adapter, HISTORY, 10)
    recommend(adapter, HISTORY, 10, candidates=5, item_tables=item_tables)  # load the backbone once
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item-tables", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--rerank", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-catalog", action="store_true", help="also time the LLM over the whole catalog")
    parser.add_argument("--cold", action="store_true", help="time the whole command in a fresh process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else demo_adapter(Path(tmp))
        if args.cold:
            history = Path(tmp) / "history.csv"
            HISTORY.to_csv(history, index=False)
            paths = {"retrieve only": command(history, args.item_tables, None, 0)}
            for n in args.rerank:
                paths[f"retrieve + LLM rerank {n}"] = command(history, args.item_tables, adapter, n)
        else:
            paths = in_process(adapter, args.item_tables, args.rerank, args.full_catalog)
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        tops: dict[str, list] = {}
        for _ in range(args.repeats):
            for name, path in paths.items():
                started = time.perf_counter()
                found = path()
                seconds[name].append(time.perf_counter() - started)
                tops[name] = found if args.cold else [r.title for r in found]
    result = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "item_tables": args.item_tables,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "seconds": seconds,
        "top10": tops,
        "history": HISTORY.to_dict(orient="records"),
    }
    (COLD_RESULTS if args.cold else RESULTS).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
