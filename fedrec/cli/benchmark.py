"""``fedrec benchmark``: run a benchmark suite and write its report."""

from __future__ import annotations

import argparse
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``benchmark`` subcommand."""
    parser = commands.add_parser("benchmark", help="run a benchmark suite and write report.md")
    parser.add_argument("--suite", required=True, help="suite name: cpu, sweeps, strategies or smoke")
    parser.add_argument("--out", required=True, help="folder of the suite's runs and report (reused on restart)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the suite; 2 for an unknown suite."""
    from ..bench.run import run_suite
    from ..bench.suites import SUITES

    if args.suite not in SUITES:
        print(f"fedrec: unknown suite '{args.suite}' (choose from {', '.join(SUITES)})", file=sys.stderr)
        return 2
    print(f"\nreport: {run_suite(args.suite, args.out)}")
    return 0
