"""The ``fedrec`` command: one module per subcommand, each adding its parser and
carrying it out.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from . import audit, benchmark, config, deploy, recommend, simulate

COMMANDS = (simulate, config, benchmark, recommend, deploy, audit)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedrec`` console script."""
    parser = argparse.ArgumentParser(prog="fedrec", description="Federated DP-LoRA recommendation on Flower.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C: runs stop cleanly
    try:
        return args.run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
