"""The ``fedrec`` command."""

from __future__ import annotations

import argparse
import json
import sys

import tomli_w

from .config import PRESETS, ConfigError, parse_overrides, resolve_config
from .deploy import add_deploy_parser, run_deploy
from .server.checkpoint import CheckpointError
from .server.results import ResultsFolderError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="base settings (default: demo)")
    parser.add_argument("--config", help="TOML file of config keys, applied over the preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set num-clients=8",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedrec`` console script."""
    parser = argparse.ArgumentParser(prog="fedrec", description="Federated DP-LoRA recommendation on Flower.")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="run a federated simulation and print its summary")
    _add_config_args(sim)
    sim.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    sim.add_argument("--verbose", action="store_true", help="Flower's debug logging")
    sim.add_argument(
        "--resume", metavar="RUN", help="continue the interrupted run in folder RUN from its checkpoint, as configured"
    )
    show = commands.add_parser("config", help="print the resolved configuration as TOML")
    _add_config_args(show)
    bench = commands.add_parser("benchmark", help="run a benchmark suite and write report.md")
    bench.add_argument("--suite", required=True, help="suite name: cpu, sweeps, strategies or smoke")
    bench.add_argument("--out", required=True, help="folder of the suite's runs and report (reused on restart)")
    rec = commands.add_parser("recommend", help="rank the catalog for one user from a local history, on this machine")
    rec.add_argument("--adapter", required=True, help="a run's adapter folder (runs/<run>/adapter)")
    rec.add_argument("--history", required=True, help="CSV/TSV or JSON-lines file of item,rating[,timestamp]")
    rec.add_argument("-k", type=int, default=10, help="number of recommendations (default: 10)")
    rec.add_argument("--config", help="the run's config file (default: config.toml beside the adapter folder)")
    rec.add_argument(
        "--candidates",
        type=int,
        default=0,
        metavar="N",
        help="score the N most-rated unrated items only (default: all)",
    )
    add_deploy_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "deploy":
        return run_deploy(args)
    if args.command == "recommend":
        from .recommend import RecommendError, format_recommendations, recommend

        try:
            found = recommend(args.adapter, args.history, args.k, args.config, args.candidates)
        except RecommendError as err:
            print(f"fedrec: {err}", file=sys.stderr)
            return 2
        print(format_recommendations(found))
        return 0
    if args.command == "benchmark":
        from .simulation.benchmark import SUITES, run_suite

        if args.suite not in SUITES:
            print(f"fedrec: unknown suite '{args.suite}' (choose from {', '.join(SUITES)})", file=sys.stderr)
            return 2
        print(f"\nreport: {run_suite(args.suite, args.out)}")
        return 0
    try:
        overrides = parse_overrides(args.overrides)
        if getattr(args, "out", None):
            overrides["out"] = args.out
        cfg = resolve_config(args.preset, args.config, overrides)
    except ConfigError as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(tomli_w.dumps(cfg.to_run_config()), end="")
        return 0
    from .simulation.report import summary_table
    from .simulation.runner import resume, simulate

    if args.resume:
        try:
            out, summary = resume(args.resume, verbose=args.verbose)
        except (ConfigError, ResultsFolderError, CheckpointError) as err:
            print(f"fedrec: {err}", file=sys.stderr)
            return 2
    else:
        out, summary = simulate(cfg, verbose=args.verbose)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    print()
    print(summary_table(rounds, summary))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
