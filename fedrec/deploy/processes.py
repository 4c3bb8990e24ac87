"""The environment of local Flower processes, and free loopback ports for them."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def flower_environment(flwr_home: str | Path | None = None) -> dict[str, str]:
    """The environment of this process with its interpreter's scripts folder first on PATH
    (Flower starts ``flower-superexec`` and the app processes from PATH); with
    ``flwr_home``, also ``FLWR_HOME`` and no update check (trial processes).
    """
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    if flwr_home is not None:
        env |= {"FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return env


def free_local_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that are free now (for trial processes)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
