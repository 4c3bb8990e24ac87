"""``fedrec simulate``: run a federated simulation and print its summary."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import ConfigError
from ..server.checkpoint import CheckpointError
from ..server.results import ResultsFolderError
from .options import add_config_args, config_from_args


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``simulate`` subcommand."""
    parser = commands.add_parser("simulate", help="run a federated simulation and print its summary")
    add_config_args(parser)
    parser.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    parser.add_argument("--verbose", action="store_true", help="Flower's debug logging (in the run's flower.log)")
    parser.add_argument(
        "--resume", metavar="RUN", help="continue the interrupted run in folder RUN from its checkpoint, as configured"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the simulation; 2 on invalid settings or results folder."""
    from ..simulation.report import summary_table
    from ..simulation.runner import resume, simulate

    try:
        if args.resume:
            out, summary = resume(args.resume, verbose=args.verbose)
        else:
            out, summary = simulate(config_from_args(args), verbose=args.verbose)
    except (ConfigError, ResultsFolderError, CheckpointError) as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    print()
    print(summary_table(rounds, summary))
    print(f"\nresults: {out}")
    return 0
