"""The ``flower-superlink`` and ``flower-supernode`` command lines of a deployment."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from . import DeployError
from .credentials import CA_CERT, SERVER_CERT, SERVER_KEY
from .processes import flower_environment

DEFAULT_SUPERLINK_PORT = 9092
DEFAULT_RUNTIME_PORT = 9094  # a SuperNode's local Runtime API; node i listens on 9094 + i by default
INSECURE_WARNING = (
    "WARNING: insecure mode: no TLS and no SuperNode authentication. Model updates, metrics and "
    "the app travel in clear text and any process that reaches the SuperLink can join the "
    "federation. Use it only on a trusted network, for testing."
)


def resolved_file(path: Path) -> str:
    """The absolute path of an existing file (refused with a hint when missing)."""
    if not path.is_file():
        raise DeployError(f"{path} does not exist (create it with `fedrec deploy certs`)")
    return str(path.resolve())


def superlink_command(
    certs: str | Path | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_SUPERLINK_PORT,
    database: str | Path | None = None,
) -> list[str]:
    """``flower-superlink`` with TLS from ``certs`` and SuperNode authentication, or
    insecure (no TLS, no authentication) when ``certs`` is None. Runtime dependency
    installation is off. Without ``database`` the state (registered nodes included)
    lives in memory and is lost on restart.
    """
    command = ["flower-superlink", "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if certs is None:
        command.append("--insecure")
    else:
        folder = Path(certs)
        command += [
            "--ssl-ca-certfile",
            resolved_file(folder / CA_CERT),
            "--ssl-certfile",
            resolved_file(folder / SERVER_CERT),
            "--ssl-keyfile",
            resolved_file(folder / SERVER_KEY),
            "--enable-supernode-auth",
        ]
    if database is not None:
        command += ["--database", str(Path(database).resolve())]
    return command


def supernode_command(
    superlink: str,
    partition_id: int,
    num_partitions: int,
    root_certificate: str | Path | None,
    auth_key: str | Path | None,
    runtime_port: int | None = None,
    node_config: Sequence[str] = (),
) -> list[str]:
    """``flower-supernode`` connecting to ``superlink`` (host:port) over TLS (verified
    with ``root_certificate``) with its authentication key, or insecure when both are
    None. Its node config gives its data: ``partition-id``/``num-partitions`` plus
    ``node_config`` items (``key=value``, values as TOML literals). Its local Runtime API
    listens on 127.0.0.1:``runtime_port`` (default 9094 + partition id).
    """
    if not 0 <= partition_id < num_partitions:
        raise DeployError(f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    if (root_certificate is None) != (auth_key is None):
        raise DeployError("give both a root certificate and an authentication key, or neither (insecure)")
    if any("=" not in item for item in node_config):
        raise DeployError(f"node config items must be key=value, got {list(node_config)}")
    port = DEFAULT_RUNTIME_PORT + partition_id if runtime_port is None else runtime_port
    config = " ".join([f"partition-id={partition_id}", f"num-partitions={num_partitions}", *node_config])
    command = ["flower-supernode", "--superlink", superlink, "--host", "127.0.0.1", "--port", str(port)]
    if root_certificate is None or auth_key is None:
        command.append("--insecure")
    else:
        command += [
            "--root-certificates",
            resolved_file(Path(root_certificate)),
            "--auth-supernode-private-key",
            resolved_file(Path(auth_key)),
        ]
    return [*command, "--node-config", config]


def exec_command(command: Sequence[str]) -> None:
    """Replace this process with ``command`` in :func:`flower_environment`."""
    os.execvpe(command[0], list(command), flower_environment())
