"""``fedrec deploy``: certificates, node keys and Flower command lines for a deployment."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..deploy import DeployError
from ..deploy.commands import (
    DEFAULT_SUPERLINK_PORT,
    INSECURE_WARNING,
    exec_command,
    superlink_command,
    supernode_command,
)
from ..deploy.connection import write_connection
from ..deploy.credentials import CA_CERT, DEFAULT_HOSTS, node_key_names, write_node_key, write_trial_credentials


def _add_security_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--certs", metavar="DIR", help="folder of `fedrec deploy certs` (TLS, node authentication)")
    group.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (prints a warning)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``fedrec deploy`` subcommands."""
    deploy = commands.add_parser("deploy", help="certificates, node keys and Flower command lines for a deployment")
    sub = deploy.add_subparsers(dest="deploy_command", required=True)
    certs = sub.add_parser("certs", help="write a trial CA, a SuperLink certificate and SuperNode key pairs")
    certs.add_argument("folder")
    certs.add_argument("--nodes", type=int, default=3, help="SuperNode key pairs node-<i>.key/.pub (default: 3)")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="another name or IP address of the SuperLink for its certificate (repeatable; "
        "127.0.0.1 and localhost are always in it)",
    )
    certs.add_argument("--days", type=int, default=30, help="validity (default: 30 days)")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    key = sub.add_parser("node-key", help="write one SuperNode key pair PATH and PATH with suffix .pub")
    key.add_argument("path")
    key.add_argument("--force", action="store_true", help="replace existing files")
    link = sub.add_parser("superlink", help="print (or --exec) the flower-superlink command")
    _add_security_args(link)
    link.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all; default 127.0.0.1)")
    link.add_argument("--port", type=int, default=DEFAULT_SUPERLINK_PORT, help="Fleet, Control and Runtime APIs")
    link.add_argument("--database", help="SQLite file of its state, so registered nodes survive a restart")
    link.add_argument("--exec", action="store_true", help="start it instead of printing it")
    node = sub.add_parser("supernode", help="print (or --exec) the flower-supernode command")
    _add_security_args(node)
    node.add_argument("--key", help="the node's private key (default: CERTS/node-<partition-id>.key)")
    node.add_argument("--superlink", required=True, metavar="HOST:PORT")
    node.add_argument("--partition-id", type=int, required=True)
    node.add_argument("--num-partitions", type=int, required=True)
    node.add_argument("--runtime-port", type=int, help="its local Runtime API port (default: 9094 + partition id)")
    node.add_argument("--node-config", action="append", default=[], metavar="KEY=VALUE", help="more node config")
    node.add_argument("--exec", action="store_true", help="start it instead of printing it")
    conn = sub.add_parser("connection", help="add [superlink.NAME] to $FLWR_HOME/config.toml for `flwr run . NAME`")
    conn.add_argument("name")
    _add_security_args(conn)
    conn.add_argument("--superlink", required=True, metavar="HOST:PORT")
    deploy.set_defaults(run=run)


def _flower_command(args: argparse.Namespace, certs: Path | None) -> list[str]:
    """The flower-superlink or flower-supernode command line of ``fedrec deploy``."""
    if args.deploy_command == "superlink":
        return superlink_command(certs, args.host, args.port, args.database)
    if certs is None and args.key:
        raise DeployError("--key needs --certs: an insecure SuperNode cannot authenticate")
    key = args.key or (None if certs is None else certs / node_key_names(args.partition_id)[0])
    root_certificate = None if certs is None else certs / CA_CERT
    return supernode_command(
        args.superlink,
        args.partition_id,
        args.num_partitions,
        root_certificate,
        key,
        args.runtime_port,
        args.node_config,
    )


def run(args: argparse.Namespace) -> int:
    """Carry out a ``fedrec deploy`` subcommand; 2 on invalid settings or files."""
    certs = Path(args.certs) if getattr(args, "certs", None) else None
    if getattr(args, "insecure", False):
        print(INSECURE_WARNING, file=sys.stderr)
    try:
        if args.deploy_command == "certs":
            hosts = [*DEFAULT_HOSTS, *args.host]
            paths = write_trial_credentials(args.folder, args.nodes, hosts, args.days, args.force)
            print("\n".join(f"wrote {path}" for path in paths))
            return 0
        if args.deploy_command == "node-key":
            print("\n".join(f"wrote {path}" for path in write_node_key(args.path, args.force)))
            return 0
        if args.deploy_command == "connection":
            path = write_connection(args.name, args.superlink, None if certs is None else certs / CA_CERT)
            print(f"wrote [superlink.{args.name}] to {path}; submit with: flwr run . {args.name} --stream")
            return 0
        command = _flower_command(args, certs)
    except DeployError as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    if args.exec:
        sys.stdout.flush()
        exec_command(command)
    print(shlex.join(command))
    return 0
