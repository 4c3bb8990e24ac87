"""Deployment on real Flower processes (flwr 1.41): trial TLS certificates, SuperNode
authentication keys, the ``flower-superlink`` / ``flower-supernode`` command lines and
the ``flwr`` CLI's SuperLink connection.

What flwr 1.41 expects (read from its source):

* One SuperLink port serves the Fleet, Control and Runtime APIs over HTTPS
  (``--host``/``--port``); TLS needs ``--ssl-ca-certfile``, ``--ssl-certfile`` and
  ``--ssl-keyfile`` together. Its own ``flower-superexec`` verifies the certificate at
  ``127.0.0.1:<port>``, so the server certificate must name 127.0.0.1.
* ``--enable-supernode-auth`` (refused with ``--insecure``): a SuperNode may connect
  only with a key registered by ``flwr supernode register KEY.pub <connection>``.
  Keys are EC on a NIST curve; the SuperNode reads an OpenSSH private key
  (``--auth-supernode-private-key``), registration an OpenSSH public key.
* Runtime dependency installation (``uv sync`` of the app's dependencies in a fresh
  environment) is on by default in the SuperLink (``--disable-runtime-dependency-installation``
  turns it off) and off by default in the SuperNode (``--allow-runtime-dependency-installation``
  would turn it on); both stay off here, for air-gapped machines.
* ``flwr run . <connection>`` reads ``[superlink.<connection>]`` (``address``,
  ``root-certificates`` as an absolute path, or ``insecure = true``) from
  ``$FLWR_HOME/config.toml`` (default ``~/.flwr``); ``[tool.flwr.federations]`` in
  pyproject.toml is legacy and ``flwr run`` would migrate it out of the file.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shlex
import socket
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_atomic

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_SUPERLINK_PORT = 9092
DEFAULT_RUNTIME_PORT = 9094  # a SuperNode's local Runtime API; node i listens on 9094 + i by default
INSECURE_WARNING = (
    "WARNING: insecure mode: no TLS and no SuperNode authentication. Model updates, metrics and "
    "the app travel in clear text and any process that reaches the SuperLink can join the "
    "federation. Use it only on a trusted network, for testing."
)


class DeployError(ValueError):
    """Deployment settings or files that cannot be used."""


def node_key_names(index: int) -> tuple[str, str]:
    """File names of trial SuperNode ``index``'s private and public keys."""
    return f"node-{index}.key", f"node-{index}.pub"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_usage(*allowed: str) -> x509.KeyUsage:
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    flags += ("key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{flag: flag in allowed for flag in flags})


def _certificates(hosts: Sequence[str], days: int) -> tuple[str, str, str, str]:
    """A CA and a server certificate it signs for ``hosts`` (SAN), as PEM texts: CA
    certificate, CA key, server certificate, server key.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec trial CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem_cert(ca_cert), _pem_key(ca_key), _pem_cert(server_cert), _pem_key(server_key)


def _node_key_pair(comment: str) -> tuple[str, str]:
    """An EC P-384 key pair in OpenSSH format (private, public), as flwr 1.41 reads them."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}\n"


def _write_files(folder: Path, texts: dict[str, str], private: set[str], overwrite: bool) -> list[Path]:
    """Write each file atomically, those named in ``private`` 0600 and the others 0644.
    Refuses (before writing anything) when one exists, unless ``overwrite``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = [str(folder / name) for name in texts if (folder / name).exists()]
    if existing and not overwrite:
        raise DeployError(f"refusing to overwrite {', '.join(existing)} (pass --force to replace them)")
    for name, text in texts.items():
        write_atomic(folder / name, text)  # mkstemp creates the file 0600
        if name not in private:
            (folder / name).chmod(0o644)
    return [folder / name for name in texts]


def write_trial_credentials(
    folder: str | Path,
    num_nodes: int = 3,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    overwrite: bool = False,
) -> list[Path]:
    """Write a trial CA (``ca.crt``, ``ca.key``), a SuperLink certificate for ``hosts``
    (``server.crt``, ``server.key``) and ``num_nodes`` SuperNode key pairs
    (``node-<i>.key``, ``node-<i>.pub``) into ``folder``. 127.0.0.1 is always among the
    hosts (the SuperLink's own processes connect there).
    """
    if num_nodes < 0 or days <= 0:
        raise DeployError("the number of nodes must be >= 0 and the validity in days > 0")
    ca_cert, ca_key, server_cert, server_key = _certificates([*dict.fromkeys([*hosts, "127.0.0.1"])], days)
    texts = {CA_CERT: ca_cert, CA_KEY: ca_key, SERVER_CERT: server_cert, SERVER_KEY: server_key}
    private = {CA_KEY, SERVER_KEY}
    for i in range(num_nodes):
        private_name, public_name = node_key_names(i)
        texts[private_name], texts[public_name] = _node_key_pair(f"fedrec-node-{i}")
        private.add(private_name)
    return _write_files(Path(folder), texts, private, overwrite)


def write_node_key(path: str | Path, overwrite: bool = False) -> list[Path]:
    """Write one SuperNode key pair: ``path`` (private, OpenSSH) and the same name with
    suffix ``.pub``. Run it on the node, so that its private key never leaves it; only the
    ``.pub`` goes to the SuperLink's operator.
    """
    path = Path(path)
    if path.suffix == ".pub":
        raise DeployError(f"{path} names a public key; give the private key's path")
    private, public = _node_key_pair(path.stem)
    texts = {path.name: private, path.with_suffix(".pub").name: public}
    return _write_files(path.parent, texts, {path.name}, overwrite)


def _resolved_file(path: Path) -> str:
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
            _resolved_file(folder / CA_CERT),
            "--ssl-certfile",
            _resolved_file(folder / SERVER_CERT),
            "--ssl-keyfile",
            _resolved_file(folder / SERVER_KEY),
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
            _resolved_file(Path(root_certificate)),
            "--auth-supernode-private-key",
            _resolved_file(Path(auth_key)),
        ]
    return [*command, "--node-config", config]


def write_connection(name: str, superlink: str, root_certificate: str | Path | None) -> Path:
    """Add (or replace) ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` so that
    ``flwr run . <name>`` submits to ``superlink`` over TLS verified with
    ``root_certificate``, or insecurely when it is None. Returns the file's path.
    """
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML, FLOWER_CONFIG_FILE
    from flwr.supercore.utils import get_flwr_home

    path = get_flwr_home() / FLOWER_CONFIG_FILE
    try:
        # flwr writes its default file when there is none
        config = tomllib.loads(path.read_text() if path.exists() else DEFAULT_FLOWER_CONFIG_TOML)
    except tomllib.TOMLDecodeError as err:
        raise DeployError(f"{path} is not valid TOML: {err}") from None
    entry: dict[str, str | bool] = {"address": superlink}
    if root_certificate is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = _resolved_file(Path(root_certificate))
    config.setdefault("superlink", {})[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, tomli_w.dumps(config))
    return path


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


def exec_command(command: Sequence[str]) -> None:
    """Replace this process with ``command`` in :func:`flower_environment`."""
    os.execvpe(command[0], list(command), flower_environment())


def _add_security_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--certs", metavar="DIR", help="folder of `fedrec deploy certs` (TLS, node authentication)")
    group.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (prints a warning)")


def add_deploy_parser(commands: argparse._SubParsersAction) -> None:
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


def run_deploy(args: argparse.Namespace) -> int:
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
