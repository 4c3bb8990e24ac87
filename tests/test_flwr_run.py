"""`flwr run .` on a local SuperLink runs the same ServerApp and ClientApp."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
SMOKE = (
    "backbone='tiny-llama' num-server-rounds=1 num-clients=2 max-users=20 history-length=3 "
    "train-examples-per-user=4 eval-users=20 max-length=128 batch-size=8 physical-batch-size=8 "
    "target-epsilon=50.0 client-cpus=1.0 compute-dtype='float32'"
)


def _stop_processes_mentioning(marker: str) -> None:
    """Stop (by PID) the detached local SuperLink that `flwr run` started."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in found if int(p) != os.getpid()]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 20
    while pids and time.time() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.5)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_flwr_run_dot_runs_the_app(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    venv_bin = Path(sys.executable).parent  # `flwr run` starts `flower-superlink` from PATH
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # the app runs in this environment, no per-run venv
    }
    flwr = str(venv_bin / "flwr")
    command = [
        flwr,
        "run",
        str(ROOT),
        "--run-config",
        f"{SMOKE} out='{out}'",
        "--federation-config",
        "num-supernodes=2",
        "--stream",
    ]
    try:
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=480)
    finally:
        _stop_processes_mentioning(str(flwr_home))
    assert (out / "summary.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["epsilon"]["max"] > 0
    assert (ROOT / "pyproject.toml").read_bytes() == pyproject
    shutil.rmtree(flwr_home, ignore_errors=True)
