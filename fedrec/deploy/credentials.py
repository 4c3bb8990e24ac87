"""Trial credentials: a CA, a SuperLink certificate and SuperNode key pairs."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..files import write_atomic
from . import DeployError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


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
