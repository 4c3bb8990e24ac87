"""``fedrec simulate``: run a federated simulation and print its summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError
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
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the settings, data, item tables and results folder, then stop (nothing is written)",
    )
    parser.set_defaults(run=run)


INTERRUPTED = 130  # the shell's exit status of a process ended by SIGINT
FAILED = 1


def how_to_go_on(out: Path) -> str:
    """What an interrupted or failed run left in ``out`` and how to go on."""
    from ..server.checkpoint import CHECKPOINT_DIR
    from ..simulation.runner import summary_incomplete

    if summary_incomplete(out):
        return f"the rounds are done; complete the summary with: fedrec simulate --resume {out}"
    if (out / CHECKPOINT_DIR).exists():
        return f"continue with: fedrec simulate --resume {out}"
    return f"no round was checkpointed; {out} can be used again"


def run(args: argparse.Namespace) -> int:
    """Run (or resume, or only check) the simulation; 2 on invalid settings, data, item
    tables or results folder, found before anything is written or started (the
    simulation stack, pandas and Flower, is imported here: other commands start fast).
    """
    from ..data.interactions import DataError
    from ..server.checkpoint import CHECKPOINT_DIR, CheckpointError
    from ..server.results import ResultsFolderError, failure
    from ..simulation.engine import EngineError
    from ..simulation.preflight import preflight, start_up_warnings
    from ..simulation.report import summary_table
    from ..simulation.runner import SimulationError, absolute_paths, resume_config, simulate

    cfg = None
    try:
        cfg = absolute_paths(resume_config(args.resume) if args.resume else config_from_args(args))
        for warning in start_up_warnings(cfg):
            print(f"fedrec: warning: {warning}", file=sys.stderr)
        if args.check:
            data = preflight(cfg)
            users = sum(len(p) for p in data.partitions)
            print(f"fedrec: ok: {users} users on {len(data.partitions)} clients; results folder {cfg.server.out}")
            return 0
        out, summary = simulate(cfg, verbose=args.verbose)
    except (ConfigError, DataError, ResultsFolderError, CheckpointError) as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f"; {how_to_go_on(Path(cfg.server.out))}" if cfg is not None else ""
        print(f"fedrec: interrupted{where}", file=sys.stderr)
        return INTERRUPTED
    except (SimulationError, EngineError) as err:
        assert cfg is not None
        out = Path(cfg.server.out)
        resumable = failure(out) is not None and (out / CHECKPOINT_DIR).exists()
        again = " (or run again with the same --out: the failed run is set aside)" if resumable else ""
        print(f"fedrec: {err}; {how_to_go_on(out)}{again}", file=sys.stderr)
        return FAILED
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    print()
    print(summary_table(rounds, summary))
    print(f"\nresults: {out}")
    return 0
