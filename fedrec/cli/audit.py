"""``fedrec audit RUN``: recompute every client's epsilon of a run from its results folder."""

from __future__ import annotations

import argparse
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``audit`` subcommand."""
    parser = commands.add_parser(
        "audit", help="recompute each client's epsilon from a run's privacy.jsonl with Opacus and check the budgets"
    )
    parser.add_argument("folder", metavar="RUN", help="a run's results folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """0: every epsilon recomputed and within budget; 1: a mismatch or a client over its
    budget; 2: the folder cannot be audited.
    """
    from ..config import ConfigError
    from ..server.privacy_log import audit_run
    from ..server.results import ResultsFolderError

    try:
        audit = audit_run(args.folder)
    except (ConfigError, ResultsFolderError) as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    dp = audit.config.record_dp
    print("| client | reports | releases | epsilon reported | epsilon recomputed | status |")
    print("|---|---|---|---|---|---|")
    for c in audit.clients:
        status = "ok" if not c.problems else f"{len(c.problems)} problem(s)"
        print(f"| {c.client} | {c.reports} | {c.releases} | {c.reported:.6f} | {c.recomputed:.6f} | {status} |")
    setting = f"accountant {dp.accountant}, delta {dp.target_delta:g}, target-epsilon {dp.target_epsilon:g}"
    if audit.problems:
        for problem in audit.problems:
            print(f"fedrec audit: {problem}", file=sys.stderr)
        print(f"fedrec audit: FAILED ({len(audit.problems)} problem(s); {setting})", file=sys.stderr)
        return 1
    print(f"\nfedrec audit: ok: {len(audit.clients)} clients, every epsilon recomputed with Opacus ({setting})")
    return 0
