"""What ``compute-dtype`` costs on this machine: one resident recommender per dtype (the
demo's adapter shape, an ease retriever, LLM rerank of the top 20), the same new
histories asked of each, alternating, in one process (the prefix cache cleared before
each ask). On a CPU without native bfloat16
(AVX2 only) torch emulates it; ``auto`` then runs float32.

    python benchmarks/compute_dtype_speed.py --item-tables runs/<ease run>/item-weights.npz

Writes ``results/compute_dtype_speed.json``: median seconds per new history, each
dtype's top 10, and what ``auto`` resolved to.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import tomli_w
import torch
from recommend_speed import HISTORY, demo_adapter, history

from fedrec.client.recommend import Recommender
from fedrec.config import read_config_file
from fedrec.models.precision import resolve_compute_dtype, scoring_device
from fedrec.models.prefix_cache import PREFIX_CACHE

RESULTS = Path(__file__).parent / "results" / "compute_dtype_speed.json"
DTYPES = ("auto", "float32", "bfloat16")


def recommenders(folder: Path, adapter: Path, item_tables: str, candidates: int) -> dict[str, Recommender]:
    """One loaded recommender per compute dtype, the adapter run's config otherwise unchanged."""
    run = read_config_file(adapter.parent / "config.toml")
    loaded = {}
    for dtype in DTYPES:
        config = folder / f"{dtype}.toml"
        config.write_text(tomli_w.dumps({**run, "compute-dtype": dtype}))
        loaded[dtype] = Recommender(adapter, item_tables, config, candidates).load()
        loaded[dtype].recommend(HISTORY, 10)  # warm-up on a history no repeat asks for
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item-tables", required=True)
    parser.add_argument("--adapter", help="an LLM run's adapter folder (default: the demo's shape, random B)")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.repeats <= len(HISTORY):
        parser.error(f"--repeats is 1 to {len(HISTORY)} (one new history a repeat)")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else demo_adapter(Path(tmp))
        loaded = recommenders(Path(tmp), adapter, args.item_tables, args.candidates)
        seconds: dict[str, list[float]] = {dtype: [] for dtype in loaded}
        tops: dict[str, list[str]] = {}
        for repeat in range(args.repeats):
            for dtype, recommender in loaded.items():
                PREFIX_CACHE.clear()  # auto and the dtype it resolves to would share the history's states
                began = time.perf_counter()
                found = recommender.recommend(history(repeat), 10)
                seconds[dtype].append(time.perf_counter() - began)
                tops[dtype] = [r.title for r in found]
    device = scoring_device()
    result = {
        "machine": f"{platform.machine()} {device}, {torch.get_num_threads()} threads, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "auto_resolves_to": str(resolve_compute_dtype("auto", device)).removeprefix("torch."),
        "candidates": args.candidates,
        "median_seconds": {dtype: statistics.median(values) for dtype, values in seconds.items()},
        "seconds": seconds,
        "top10_last_history": tops,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
