"""Running apps on Flower's simulation runtime the way Flower 1.41 supports it: ``flwr run``
against a SuperLink in simulation mode.

:class:`LocalSuperLink` starts ``flower-superlink --simulation`` on a free loopback port
with its own ``FLWR_HOME`` and runtime dependency installation off (nothing is installed
per run: the apps run in this environment), and stops it by its PID. :func:`flwr_run`
writes an app folder whose ``pyproject.toml`` names the ServerApp and ClientApp and holds
the run's whole configuration, submits it with ``flwr run --stream``, writes Flower's log
stream to a file and echoes the lines the apps print with a given prefix.

Flower starts its SuperExec in a new session, so stopping the SuperLink does not by
itself stop a run in progress: every process of a run carries the SuperLink's token in
its environment, and :meth:`LocalSuperLink.stop` kills those that are left; if this
process is killed outright, the ServerApp stops itself (:mod:`fedrec.server.owner`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tomli_w

from ..deploy.processes import flower_environment, free_local_ports
from ..server.owner import OWNER_PID_ENV, TOKEN_ENV, kill_marked, run_markers

STARTUP_SECONDS = 60.0
STOP_SECONDS = 20.0
BLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EngineError(RuntimeError):
    """The local SuperLink or ``flwr run`` failed."""


@dataclass(frozen=True)
class FlowerApp:
    """The components of a Flower app and its run configuration."""

    run_config: Mapping[str, Any]
    serverapp: str = "fedrec.server.app:app"
    clientapp: str = "fedrec.client.app:app"

    def pyproject(self) -> str:
        """The app's ``pyproject.toml``: no dependencies, every config key."""
        document = {
            "project": {"name": "fedrec-run", "version": "1.0.0", "dependencies": []},
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": "fedrec",
                        "components": {"serverapp": self.serverapp, "clientapp": self.clientapp},
                        "config": dict(self.run_config),
                    }
                }
            },
        }
        return tomli_w.dumps(document)


class LocalSuperLink:
    """A SuperLink in simulation mode on 127.0.0.1, owned by this process."""

    def __init__(self, log_path: Path) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="fedrec-flwr-"))
        self.log_path = log_path
        self.port = free_local_ports(1)[0]
        self.token = secrets.token_hex(8)
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of Flower processes talking to this SuperLink, with NumPy's
        OpenBLAS on one thread unless ``OPENBLAS_NUM_THREADS`` is set: the simulation runs
        the ServerApp in a thread, where a threaded OpenBLAS matrix-vector product can wait
        forever for its own workers (numpy#17752; seen once here, in the ranking evaluation,
        a server spinning in ``exec_blas`` for 20 minutes); with one thread OpenBLAS calls
        its kernels directly. The server's EASE fit takes about 1 s longer.
        """
        blas = {BLAS_THREADS_ENV: os.environ.get(BLAS_THREADS_ENV, "1")}
        return flower_environment(self.home) | {TOKEN_ENV: self.token, OWNER_PID_ENV: str(os.getpid())} | blas

    def start(self) -> LocalSuperLink:
        """Start it and wait until it serves its health endpoint."""
        command = [
            "flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port),
            "--health-server-address", f"127.0.0.1:{free_local_ports(1)[0]}",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        (self.home / "config.toml").write_text(
            tomli_w.dumps({"superlink": {"local": {"address": f"127.0.0.1:{self.port}", "insecure": True}}})
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        try:
            while not self._healthy():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise EngineError(f"the local SuperLink did not start; see {self.log_path}")
                time.sleep(0.2)
        except BaseException:  # an interrupt too: __exit__ does not run when __enter__ raises
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, interrupted: bool = False) -> None:
        """Stop it by its PID (SIGTERM, then SIGKILL), kill what is left of its runs, and
        remove its home folder. ``interrupted``: kill the runs' processes (and it) first,
        so that no ServerApp goes on training, or finishes, while it shuts down.
        """
        if interrupted:
            kill_marked(run_markers(self.token, os.getpid()))
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_SECONDS)
        kill_marked(run_markers(self.token, os.getpid()))
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        self.stop(interrupted=error_type is not None)


def flwr_run(
    superlink: LocalSuperLink,
    app: FlowerApp,
    federation_config: Mapping[str, Any],
    log: IO[str],
    echo: Callable[[str], None] | None = None,
    echo_prefix: str = "[fedrec]",
) -> int:
    """Submit ``app`` to ``superlink`` with ``flwr run --stream`` and wait for the run to
    end; Flower's stream goes to ``log``, its lines holding ``echo_prefix`` also to
    ``echo``. Returns ``flwr``'s exit status.
    """
    folder = superlink.home / "app"
    folder.mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text(app.pyproject())
    overrides = " ".join(f"{key}={tomli_w.dumps({'v': value})[4:].strip()}" for key, value in federation_config.items())
    command = ["flwr", "run", str(folder), "local", "--federation-config", overrides, "--stream"]
    process = subprocess.Popen(
        command, env=superlink.env, cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        log.write(line)
        log.flush()
        plain = _ANSI.sub("", line)
        if echo is not None and echo_prefix in plain:
            echo(plain[plain.index(echo_prefix) :].rstrip("\n"))
    return process.wait()
