"""Deployment on real Flower processes on 127.0.0.1: a SuperLink with TLS and SuperNode
authentication, SuperNodes with registered keys, `flwr run` of the app; an unregistered
SuperNode is turned away; a node whose ClientApp fails is dropped from SecAgg+ rounds
that complete without it; a killed ServerApp resumes while a restarted SuperNode keeps its
budget. Every process is stopped by its PID, and none is left behind.
"""

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from safetensors.torch import load_file
from test_flwr_run import SMOKE

from fedrec.cli import main
from fedrec.client.node import LEDGER_FILE
from fedrec.deploy.commands import superlink_command, supernode_command
from fedrec.deploy.credentials import CA_CERT, SERVER_CERT, node_key_names, write_trial_credentials
from fedrec.deploy.processes import flower_environment, free_local_ports
from fedrec.privacy.ledger import load_ledger
from fedrec.server.checkpoint import CheckpointError, read_checkpoint

ROOT = Path(__file__).parents[1]
VENV_BIN = Path(sys.executable).parent
CONNECTION = "fedrec-test"
NUM_NODES = 3  # honest nodes, partitions 0, 1, 2
BROKEN = NUM_NODES  # key pair node-3: registered, but its data file is missing (its ClientApp fails)
ROGUE = NUM_NODES + 1  # key pair node-4 is never registered
ONLINE = NUM_NODES + 1


def _wait_for(condition, seconds: float, what: str, interval: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def _processes_with(marker: str) -> list[int]:
    """PIDs of this user's live processes whose environment mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _command_lines(pids: list[int]) -> dict[int, str]:
    """The command line of each of ``pids`` that still runs."""
    lines = {}
    for pid in pids:
        try:
            lines[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return lines


class Processes:
    """Long-running Flower processes of a test, each logging to its own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        home = self.folder / f"home-{name}"
        home.mkdir()
        with open(self.log(name), "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=flower_environment(home), cwd=self.folder
            )
        self.running[name] = process
        return process

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def stop_all(self) -> None:
        """SIGTERM the SuperNodes by PID, then the SuperLink, each SIGKILLed if still
        running after 30 s; then check that no helper process (SuperExec, ServerApp,
        ClientApp) of this folder outlives them: each gets 60 s to notice its parent is
        gone (Flower's monitor interrupts it, which a busy process handles late), then is
        SIGKILLed by PID with a warning, and must be gone 10 s later.
        """
        nodes = [p for name, p in self.running.items() if name != "superlink"]
        for group in (nodes, [p for name, p in self.running.items() if name == "superlink"]):
            for process in group:
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            for process in group:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        marker = f"FLWR_HOME={self.folder}"
        try:
            _wait_for(lambda: not _processes_with(marker), 60, "Flower's helper processes to exit")
        except AssertionError as timed_out:
            stragglers = _command_lines(_processes_with(marker))
            warnings.warn(f"{timed_out}; SIGKILLing {stragglers}", stacklevel=1)
            for pid in stragglers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it exited meanwhile
                    continue
            _wait_for(lambda: not _processes_with(marker), 10, "SIGKILLed helper processes to exit")


def _flwr(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _online(fed: SimpleNamespace) -> int:
    return sum(node["status"] == "online" for node in _nodes(fed))


def _nodes(fed: SimpleNamespace) -> list[dict]:
    result = _flwr(["supernode", "list", CONNECTION, "--format", "json"], fed.cli_env, 60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["nodes"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A TLS SuperLink with node authentication; online: 3 registered SuperNodes and a
    registered one whose ``data-path`` does not exist.
    """
    folder = tmp_path_factory.mktemp("deploy")
    certs = folder / "certs"
    write_trial_credentials(certs, num_nodes=ROGUE + 1)
    link_port, *runtime_ports = free_local_ports(ROGUE + 2)
    address = f"127.0.0.1:{link_port}"
    fed = SimpleNamespace(
        folder=folder,
        certs=certs,
        address=address,
        runtime_ports=runtime_ports,
        cli_env=flower_environment(folder / "home-cli"),
    )
    fed.processes = Processes(folder)
    try:
        link = fed.processes.start("superlink", superlink_command(certs, "127.0.0.1", link_port))
        tls = ssl.create_default_context(cafile=str(certs / CA_CERT))  # verifies the certificate and its SAN

        def healthy() -> bool:
            assert link.poll() is None, fed.processes.log("superlink").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"https://{address}/health", context=tls, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        _wait_for(healthy, 60, "the SuperLink's HTTPS endpoint")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FLWR_HOME", fed.cli_env["FLWR_HOME"])
            assert main(["deploy", "connection", CONNECTION, "--certs", str(certs), "--superlink", address]) == 0
        registered = []
        for i in range(ONLINE):
            public_key = certs / node_key_names(i)[1]
            result = _flwr(["supernode", "register", str(public_key), CONNECTION, "--format", "json"], fed.cli_env, 60)
            assert result.returncode == 0, result.stdout + result.stderr
            registered.append(str(json.loads(result.stdout)["node-id"]))
        fed.node_ids, fed.broken_id = set(registered), registered[BROKEN]
        fed.supernode_commands = [
            supernode_command(
                address,
                i,
                NUM_NODES,
                certs / CA_CERT,
                certs / node_key_names(i)[0],
                runtime_ports[i],
                [f"state-dir='{folder / f'node-{i}'}'"],  # the node's privacy ledger on its disk
            )
            for i in range(NUM_NODES)
        ]
        for i, command in enumerate(fed.supernode_commands):
            fed.processes.start(f"supernode-{i}", command)
        missing = [f"data-path='{folder / 'missing.csv'}'"]
        key = certs / node_key_names(BROKEN)[0]
        fed.processes.start(
            "supernode-broken", supernode_command(address, 0, 1, certs / CA_CERT, key, runtime_ports[BROKEN], missing)
        )
        _wait_for(lambda: _online(fed) == ONLINE, 90, "4 SuperNodes online")
        yield fed
    finally:
        fed.processes.stop_all()


def test_unregistered_supernode_is_rejected(federation):
    fed = federation
    key = fed.certs / node_key_names(ROGUE)[0]
    rogue = fed.processes.start(
        "rogue", supernode_command(fed.address, 0, NUM_NODES, fed.certs / CA_CERT, key, fed.runtime_ports[ROGUE])
    )
    _wait_for(lambda: rogue.poll() is not None, 60, "the unregistered SuperNode to give up")
    log = fed.processes.log("rogue").read_text()
    assert rogue.returncode != 0, log
    assert "Failed to initialize the connection to the SuperLink" in log, log
    assert "No SuperNode found with the given public key" in fed.processes.log("superlink").read_text()
    nodes = _nodes(fed)
    assert {node["node-id"] for node in nodes} == fed.node_ids
    assert all(node["status"] == "online" for node in nodes)


# fixed noise: the nodes' ledgers span runs, so a noise calibrated to the remaining budget would differ between runs
RUN = "num-server-rounds=2 num-clients=3 secure-aggregation=true dp=true noise-multiplier=1.0 target-epsilon=1000.0"


def _flwr_run(fed: SimpleNamespace, out: Path, overrides: str, wait: bool = True) -> subprocess.CompletedProcess:
    """`flwr run` of the smoke settings plus ``overrides`` (later ``-c`` wins); with
    ``wait`` it streams the run's logs until the end, and its results folder must appear.
    """
    command = [str(VENV_BIN / "flwr"), "run", str(ROOT), CONNECTION, "-c", SMOKE, "-c", f"{overrides} out='{out}'"]
    result = subprocess.run(
        [*command, "--stream"] if wait else command,
        env=fed.cli_env,
        cwd=fed.folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if wait:
        assert (out / "summary.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _server_app_pids(fed: SimpleNamespace) -> list[int]:
    """PIDs of the ServerApp processes that the SuperLink started."""
    processes = _command_lines(_processes_with(f"FLWR_HOME={fed.folder / 'home-superlink'}"))
    return [pid for pid, command in processes.items() if "flwr-serverapp" in command]


def _checkpointed_round(out: Path) -> int:
    try:
        return read_checkpoint(out).round
    except (CheckpointError, OSError):  # none yet, or being swapped in
        return 0


@pytest.fixture(scope="module")
def resumed_run(federation):
    """One `flwr run` over TLS whose ServerApp process is SIGKILLed after round 1; SuperNode
    0 is restarted by its PID, then the run resumes to the end. Returns its folder and what
    was on disk at the kill: the rounds, the checkpoint's arrays and node 0's ledger.
    (That a resumed run ends with the uninterrupted run's adapter is test_resume's.)
    """
    fed = federation
    out = fed.folder / "run"
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    _flwr_run(fed, out, RUN, wait=False)
    _wait_for(lambda: _checkpointed_round(out) >= 1, 420, "the checkpoint of round 1", interval=0.5)
    (server_app,) = _server_app_pids(fed)
    os.kill(server_app, signal.SIGKILL)
    _wait_for(lambda: not _server_app_pids(fed), 30, "the ServerApp to die")
    killed = SimpleNamespace(checkpoint=read_checkpoint(out), rounds=_rounds(out))
    killed.finished = (out / "summary.json").exists()
    killed.ledger = load_ledger(fed.folder / "node-0" / LEDGER_FILE, "rdp")

    node = fed.processes.running.pop("supernode-0")
    os.kill(node.pid, signal.SIGTERM)  # restart node 0 by its PID, with the same key and disk
    node.wait(timeout=30)
    fed.processes.start("supernode-0-restarted", fed.supernode_commands[0])
    _wait_for(lambda: _online(fed) == ONLINE, 90, "node 0 back online")
    _flwr_run(fed, out, f"{RUN} resume=true")
    assert (ROOT / "pyproject.toml").read_bytes() == pyproject  # `flwr run` did not rewrite it
    return out, killed


def test_flwr_run_over_tls_with_authenticated_supernodes(federation, resumed_run):
    fed = federation
    out, _ = resumed_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["dp"] and summary["epsilon"]["max"] > 0
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:  # the rounds ran SecAgg+ without the broken node, which failed after sharing its keys
        assert (r["clients_sampled"], r["clients_ok"], r["clients_failed"]) == (ONLINE, NUM_NODES, 1), r
        assert list(r["secagg_dropped"]) == [fed.broken_id], r
        assert r["secagg_dropped"][fed.broken_id].startswith("collect-masked: ")
        reason = r["secagg_dropped"][fed.broken_id]
        assert "missing.csv does not exist" in reason  # the node's own error, from its traceback's last line
        assert "\n" not in reason and "\x1b" not in reason and len(reason) <= 300, reason
        assert "bytes_by_stage" in r
    assert "secure-aggregation = true" in (out / "config.toml").read_text()


def test_a_killed_server_resumes_and_a_restarted_supernode_keeps_its_budget(federation, resumed_run):
    """The resumed run keeps rounds 0 and 1 as they were at the kill, trains round 2 from
    round 1's checkpoint with the restarted node, whose epsilon continues from its ledger.
    """
    out, killed = resumed_run
    assert killed.checkpoint.round == 1 and not killed.finished
    got = _rounds(out)
    assert got[:2] == killed.rounds  # not run again
    assert [r["round"] for r in got] == [0, 1, 2]
    assert got[2]["clients_ok"] == NUM_NODES  # the restarted node trained in round 2
    final = read_checkpoint(out)
    assert final.round == 2 and final.arrays.keys() == killed.checkpoint.arrays.keys()
    moved = max(
        float(np.abs(final.arrays[name].numpy() - before.numpy()).max())
        for name, before in killed.checkpoint.arrays.items()
    )
    assert moved > 1e-2
    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(np.isfinite(tensor.numpy()).all() for tensor in resumed.values())

    after = load_ledger(federation.folder / "node-0" / LEDGER_FILE, "rdp")
    delta = 1e-5
    # a node that had lost its ledger would hold round 2's steps only (never more than before)
    assert after.steps > killed.ledger.steps and after.epsilon(delta) > killed.ledger.epsilon(delta)
    assert got[2]["epsilon_max"] >= after.epsilon(delta) - 1e-9  # node 0 reported its continued epsilon


def test_trial_credentials_and_commands(tmp_path, capsys):
    certs = tmp_path / "certs"
    assert main(["deploy", "certs", str(certs), "--nodes", "1", "--host", "fedrec.example"]) == 0
    assert main(["deploy", "certs", str(certs)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    ca = x509.load_pem_x509_certificate((certs / CA_CERT).read_bytes())
    server = x509.load_pem_x509_certificate((certs / SERVER_CERT).read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "fedrec.example"}
    private_name, public_name = node_key_names(0)
    assert isinstance(load_ssh_private_key((certs / private_name).read_bytes(), None), ec.EllipticCurvePrivateKey)
    assert isinstance(load_ssh_public_key((certs / public_name).read_bytes()).curve, ec.SECP384R1)
    modes = {path.name: path.stat().st_mode & 0o777 for path in certs.iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "server.crt": 0o644, "server.key": 0o600} | {
        private_name: 0o600,
        public_name: 0o644,
    }

    assert main(["deploy", "superlink", "--certs", str(certs), "--port", "9999"]) == 0
    printed = capsys.readouterr()
    assert "--enable-supernode-auth" in printed.out and "--disable-runtime-dependency-installation" in printed.out
    assert "WARNING" not in printed.err
    assert main(["deploy", "superlink", "--insecure"]) == 0
    printed = capsys.readouterr()
    assert "--insecure" in printed.out and "--enable-supernode-auth" not in printed.out
    assert "WARNING: insecure mode" in printed.err
    node = ["deploy", "supernode", "--superlink", "127.0.0.1:9999", "--num-partitions", "3"]
    assert main([*node, "--certs", str(certs), "--partition-id", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"--auth-supernode-private-key {certs / private_name}" in printed
    assert "'partition-id=0 num-partitions=3'" in printed and "--allow-runtime-dependency-installation" not in printed
    assert main([*node, "--insecure", "--partition-id", "3"]) == 2  # partition ids are 0, 1, 2
