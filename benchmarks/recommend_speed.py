"""On-device recommendation time for one user: the LLM over the whole catalog, against
retrieval with a collaborative run's item tables followed by an LLM rerank of the top N.

The LLM is the demo's (SmolLM2-135M, its adapter shape: FFA-LoRA rank 2 on the top 2
layers, bfloat16 forward); without ``--adapter`` an adapter of that shape with seeded
random B is written first (the time does not depend on its values). The history is a
handful of well-known science-fiction and action films. Each path runs ``--repeats``
times in one process, alternating; the report gives the median seconds and the ratio.

    python benchmarks/recommend_speed.py --item-tables runs/<mf run>/item-tables.npz
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import tomli_w
import torch

from fedrec.client.recommend import recommend
from fedrec.config import resolve_config
from fedrec.models.adapter import save_adapter
from fedrec.tasks.preference.scoring import scorer_for

RESULTS = Path(__file__).parent / "results" / "recommend_speed.json"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item-tables", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--rerank", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-catalog", action="store_true", help="also time the LLM over the whole catalog")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else demo_adapter(Path(tmp))
        paths = {"retrieve only": lambda: recommend(None, HISTORY, 10, item_tables=args.item_tables)}
        for n in args.rerank:
            paths[f"retrieve + LLM rerank {n}"] = lambda n=n: recommend(
                adapter, HISTORY, 10, candidates=n, item_tables=args.item_tables
            )
        if args.full_catalog:
            paths["LLM, whole catalog"] = lambda: recommend(adapter, HISTORY, 10)
        recommend(adapter, HISTORY, 10, candidates=5, item_tables=args.item_tables)  # load the backbone once
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        tops: dict[str, list[str]] = {}
        for _ in range(args.repeats):
            for name, path in paths.items():
                started = time.perf_counter()
                found = path()
                seconds[name].append(time.perf_counter() - started)
                tops[name] = [r.title for r in found]
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "median_seconds": medians,
        "top10": tops,
        "history": HISTORY.to_dict(orient="records"),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
