"""``fedrec benchmark``: run a benchmark suite and write its report."""

from __future__ import annotations

import argparse
import sys

from ..bench.suites import SUITES


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``benchmark`` subcommand."""
    parser = commands.add_parser("benchmark", help="run a benchmark suite and write report.md")
    parser.add_argument("--suite", required=True, help=f"suite name: {', '.join(SUITES)}")
    parser.add_argument("--out", required=True, help="folder of the suite's runs and report (reused on restart)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the suite; 2 for an unknown suite."""
    from ..bench.run import run_suite
    from .simulate import INTERRUPTED

    if args.suite not in SUITES:
        print(f"fedrec: unknown suite '{args.suite}' (choose from {', '.join(SUITES)})", file=sys.stderr)
        return 2
    try:
        report = run_suite(args.suite, args.out)
    except KeyboardInterrupt:
        print(f"fedrec: interrupted; run the same command again to continue the suite in {args.out}", file=sys.stderr)
        return INTERRUPTED
    print(f"\nreport: {report}")
    return 0
