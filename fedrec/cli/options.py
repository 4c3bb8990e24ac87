"""Arguments shared by the commands that resolve a configuration."""

from __future__ import annotations

import argparse

from ..config import PRESETS, FedRecConfig, parse_overrides, resolve_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset``, ``--config`` and ``--set``."""
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


def config_from_args(args: argparse.Namespace) -> FedRecConfig:
    """The configuration the arguments resolve to (``ConfigError`` when invalid)."""
    overrides = parse_overrides(args.overrides)
    if getattr(args, "out", None):
        overrides["out"] = args.out
    return resolve_config(args.preset, args.config, overrides)
