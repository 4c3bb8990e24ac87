"""On-device recommendation time for one user: the LLM over the whole catalog, against
retrieval with a collaborative run's item tables followed by an LLM rerank of the top N.

The LLM is the demo's (SmolLM2-135M, its adapter shape: FFA-LoRA rank 2 on the top 2
layers, bfloat16 forward); without ``--adapter`` an adapter of that shape with seeded
random B is written first (the time does not depend on its values). The history is a
handful of well-known science-fiction and action films, one of them left out in turn so
that every repeat asks for a new history (a repeated one would find its frozen states in
the prefix cache). Each path runs ``--repeats`` times in one process, alternating; the
report gives the median seconds and the ratio.
With ``--cold`` each path is instead the whole ``fedrec recommend`` command in a fresh
process (interpreter start, imports, loading the backbone and the retriever's file),
what a user waits for, and the first rerank once more with the scorer's remembered split
check set aside (as every cold start ran before it was remembered); written to
``recommend_speed_cold.json``. With ``--service`` each
path is a resident ``fedrec recommend --serve`` started once (its start-up timed apart),
and what is timed is the asking command, ``fedrec recommend --service SOCKET --history
...``, in a fresh process; written to ``recommend_speed_service.json``.

    python benchmarks/recommend_speed.py --item-tables runs/<mf run>/item-tables.npz
    python benchmarks/recommend_speed.py --item-tables runs/<ease run>/item-weights.npz --cold
    python benchmarks/recommend_speed.py --item-tables runs/<ease run>/item-weights.npz --service
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
from fedrec.models.backbone import cache_root
from fedrec.models.split_check import CHECKS_FILE
from fedrec.tasks.preference.scoring import scorer_for

RESULTS = Path(__file__).parent / "results" / "recommend_speed.json"
COLD_RESULTS = Path(__file__).parent / "results" / "recommend_speed_cold.json"
SERVICE_RESULTS = Path(__file__).parent / "results" / "recommend_speed_service.json"
# Star Wars, Terminator 2, The Terminator, Aliens, Alien, Die Hard, Return of the Jedi
HISTORY = pd.DataFrame({"item": ["50", "96", "195", "176", "183", "144", "181"], "rating": [5, 5, 4, 5, 4, 5, 4]})


def history(repeat: int) -> pd.DataFrame:
    """The history of one repeat: :data:`HISTORY` without one of its films, a new one each time."""
    return HISTORY.drop(index=repeat % len(HISTORY)).reset_index(drop=True)


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


def command(
    histories: list[Path], item_tables: str, adapter: Path | None, candidates: int
) -> Callable[[int], list[str]]:
    """``fedrec recommend`` for a repeat's history in a fresh process; returns its top 10 lines."""
    fedrec = str(Path(sys.executable).parent / "fedrec")  # the console script a user runs
    args = [fedrec, "recommend", "--item-tables", item_tables]
    if adapter is not None:
        args += ["--adapter", str(adapter), "--candidates", str(candidates)]

    def run(repeat: int) -> list[str]:
        return top_lines([*args, "--history", str(histories[repeat])])

    return run


def without_remembered_split_checks(path: Callable[[int], list[str]]) -> Callable[[int], list[str]]:
    """``path`` with the remembered split checks set aside while it runs (so it checks
    again, as every cold start did before they were remembered), then put back.
    """
    checks = cache_root() / CHECKS_FILE
    aside = checks.with_suffix(".aside")

    def run(repeat: int) -> list[str]:
        if checks.exists():
            checks.replace(aside)
        try:
            return path(repeat)
        finally:
            if aside.exists():
                aside.replace(checks)

    return run


def top_lines(args: list[str]) -> list[str]:
    """The last 10 lines a command prints."""
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300)
    return done.stdout.strip().splitlines()[-10:]


def serving(socket_path: Path, item_tables: str, adapter: Path | None, candidates: int) -> subprocess.Popen:
    """A resident ``fedrec recommend --serve`` for one path; returns once it answers."""
    args = [str(Path(sys.executable).parent / "fedrec"), "recommend", "--serve", str(socket_path)]
    args += ["--item-tables", item_tables]
    if adapter is not None:
        args += ["--adapter", str(adapter), "--candidates", str(candidates)]
    service = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while not socket_path.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            raise RuntimeError(f"the service for {socket_path.name} did not start")
        time.sleep(0.05)
    return service


def asking(histories: list[Path], socket_path: Path) -> Callable[[int], list[str]]:
    """``fedrec recommend --service`` for a repeat's history in a fresh process."""
    args = [str(Path(sys.executable).parent / "fedrec"), "recommend", "--service", str(socket_path)]

    def run(repeat: int) -> list[str]:
        return top_lines([*args, "--history", str(histories[repeat])])

    return run


def services(
    folder: Path, histories: list[Path], item_tables: str, adapter: Path, rerank: list[int]
) -> tuple[dict, dict, list]:
    """One started service per path (start-up seconds measured), and the command asking it."""
    paths, started, running = {}, {}, []
    for name, candidates in [("retrieve only", None), *((f"retrieve + LLM rerank {n}", n) for n in rerank)]:
        socket_path = folder / f"{len(running)}.sock"
        began = time.perf_counter()
        running.append(serving(socket_path, item_tables, adapter if candidates else None, candidates or 0))
        started[name] = time.perf_counter() - began
        paths[name] = asking(histories, socket_path)
    return paths, started, running


def in_process(adapter: Path, item_tables: str, rerank: list[int], full_catalog: bool) -> dict[str, Callable]:
    """The paths as calls of :func:`recommend` in this process (the backbone loaded once)."""
    paths: dict[str, Callable] = {"retrieve only": lambda r: recommend(None, history(r), 10, item_tables=item_tables)}
    for n in rerank:
        paths[f"retrieve + LLM rerank {n}"] = lambda r, n=n: recommend(
            adapter, history(r), 10, candidates=n, item_tables=item_tables
        )
    if full_catalog:
        paths["LLM, whole catalog"] = lambda r: recommend(adapter, history(r), 10)
    recommend(adapter, HISTORY, 10, candidates=5, item_tables=item_tables)  # load the backbone once (another history)
    return paths


def timed(paths: dict[str, Callable], repeats: int, as_lines: bool) -> tuple[dict, dict]:
    """Seconds of each path, ``repeats`` times alternating (repeat r asks for ``history(r)``),
    and each path's last top 10.
    """
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    tops: dict[str, list] = {}
    for repeat in range(repeats):
        for name, path in paths.items():
            began = time.perf_counter()
            found = path(repeat)
            seconds[name].append(time.perf_counter() - began)
            tops[name] = found if as_lines else [r.title for r in found]
    return seconds, tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item-tables", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--rerank", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-catalog", action="store_true", help="also time the LLM over the whole catalog")
    parser.add_argument("--cold", action="store_true", help="time the whole command in a fresh process")
    parser.add_argument("--service", action="store_true", help="time asking a resident service in a fresh process")
    args = parser.parse_args()
    if not 1 <= args.repeats <= len(HISTORY):
        parser.error(f"--repeats is 1 to {len(HISTORY)} (one new history a repeat)")
    started: dict[str, float] = {}
    running: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else demo_adapter(Path(tmp))
        histories = [Path(tmp) / f"history-{repeat}.csv" for repeat in range(args.repeats)]
        for repeat, path in enumerate(histories):
            history(repeat).to_csv(path, index=False)
        if args.service:
            paths, started, running = services(Path(tmp), histories, args.item_tables, adapter, args.rerank)
        elif args.cold:
            paths = {"retrieve only": command(histories, args.item_tables, None, 0)}
            for n in args.rerank:
                paths[f"retrieve + LLM rerank {n}"] = command(histories, args.item_tables, adapter, n)
            unchecked = command(histories, args.item_tables, adapter, args.rerank[0])
            paths[f"retrieve + LLM rerank {args.rerank[0]}, split checked again"] = without_remembered_split_checks(
                unchecked
            )
        else:
            paths = in_process(adapter, args.item_tables, args.rerank, args.full_catalog)
        try:
            seconds, tops = timed(paths, args.repeats, as_lines=args.cold or args.service)
        finally:
            for service in running:
                service.terminate()
                service.wait(timeout=60)
    result = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "item_tables": args.item_tables,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "seconds": seconds,
        "top10": tops,
        "history": HISTORY.to_dict(orient="records"),
        "histories": f"repeat r leaves out film r of history ({args.repeats} distinct histories)",
    }
    if args.service:
        result["service_start_seconds"] = started
    out = SERVICE_RESULTS if args.service else COLD_RESULTS if args.cold else RESULTS
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
