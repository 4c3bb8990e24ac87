"""The ``fedrec`` command: one module per subcommand, each adding its parser and
carrying it out.
"""

from __future__ import annotations

import argparse
import sys

from . import benchmark, config, deploy, recommend, simulate

COMMANDS = (simulate, config, benchmark, recommend, deploy)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedrec`` console script."""
    parser = argparse.ArgumentParser(prog="fedrec", description="Federated DP-LoRA recommendation on Flower.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
