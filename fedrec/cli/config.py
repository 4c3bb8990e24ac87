"""``fedrec config``: print the resolved configuration as TOML, or explain every key."""

from __future__ import annotations

import argparse
import sys

import tomli_w

from ..config import ConfigError
from ..config.explain import explain
from .options import add_config_args, config_from_args


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``config`` subcommand."""
    parser = commands.add_parser("config", help="print the resolved configuration as TOML")
    add_config_args(parser)
    parser.add_argument(
        "--explain", action="store_true", help="every key by section, with its help, default and allowed values"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the configuration; 2 when it is invalid."""
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    print(explain(cfg) if args.explain else tomli_w.dumps(cfg.to_run_config()), end="")
    return 0
