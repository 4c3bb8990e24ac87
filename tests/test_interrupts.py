"""SIGTERM (or Ctrl-C) at any phase of ``fedrec simulate`` stops the run and every process
it started, exits 130 with one line saying how to go on, and leaves either a resumable
checkpoint, a summary that ``--resume`` completes, or a folder a new run may use.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedrec.cli import main
from fedrec.cli.simulate import INTERRUPTED
from fedrec.server.checkpoint import read_checkpoint
from fedrec.server.owner import TOKEN_ENV, kill_marked, processes_marked
from fedrec.server.results import check_fresh
from tests.conftest import processes_left_by

FEDREC = Path(sys.executable).parent / "fedrec"
LIMIT = 300.0  # seconds any phase may take here; every wait below is bounded by it


def _start(out: Path, *settings: str) -> subprocess.Popen:
    command = [str(FEDREC), "simulate", "--preset", "smoke", "--out", str(out)]
    for setting in settings or ("num-server-rounds=50", "ranking-users=0"):
        command += ["--set", setting]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        assert child.poll() is None, f"fedrec ended before the phase: {child.communicate()[1]}"
        assert time.monotonic() < deadline, "the phase never came"
        time.sleep(0.1)


def _terminate(child: subprocess.Popen) -> tuple[int, str]:
    child.send_signal(signal.SIGTERM)
    try:
        _, err = child.communicate(timeout=LIMIT)
    finally:
        if child.poll() is None:
            child.kill()
    return child.returncode, err


def _round_checkpointed(out: Path) -> int:
    """The round of ``out``'s checkpoint, -1 while there is none; reads without touching it
    (the checkpoint is written after the round's line in ``rounds.jsonl``, so that line
    alone does not say a checkpoint holds the round).
    """
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["round"]
    except (OSError, ValueError):  # none yet, or swapped for a newer one while read
        return -1


@pytest.mark.parametrize("phase", ["start-up", "round"])
def test_sigterm_stops_the_run_and_its_processes_and_says_how_to_go_on(tmp_path, phase):
    out = tmp_path / "run"
    child = _start(out)
    if phase == "start-up":  # the local SuperLink is starting, no round has run
        _wait_for(lambda: (out / "superlink.log").exists(), child)
    else:
        _wait_for(lambda: _round_checkpointed(out) >= 1, child)
    code, err = _terminate(child)
    assert code == INTERRUPTED, err
    last = err.strip().splitlines()[-1]
    assert not processes_left_by(child.pid)  # SuperLink, SuperExec, simulation and Ray processes are gone
    assert not (out / "summary.json").exists()
    if (out / "checkpoint").exists():
        assert last == f"fedrec: interrupted; continue with: fedrec simulate --resume {out}"
        assert read_checkpoint(out).round >= (1 if phase == "round" else 0)
    else:
        assert (
            phase == "start-up" and last == f"fedrec: interrupted; no round was checkpointed; {out} can be used again"
        )
        check_fresh(out)  # a new run may take the folder


def test_sigterm_while_the_harness_completes_the_summary_leaves_it_for_resume(tmp_path):
    """The ServerApp's summary is there, the harness is adding its baselines (ranking
    ones here: seconds) when SIGTERM comes; ``--resume`` then only completes the summary.
    """
    out = tmp_path / "run"
    child = _start(out, "num-server-rounds=1")
    _wait_for(lambda: (out / "summary.json").exists(), child)
    code, err = _terminate(child)
    assert not processes_left_by(child.pid)
    if code == INTERRUPTED:  # (else the harness was quicker than this test: nothing to resume)
        last = err.strip().splitlines()[-1]
        assert (
            last
            == f"fedrec: interrupted; the rounds are done; complete the summary with: fedrec simulate --resume {out}"
        )
        assert "baselines" not in json.loads((out / "summary.json").read_text())
        rounds = (out / "rounds.jsonl").read_text()
        assert main(["simulate", "--resume", str(out)]) == 0
        assert (out / "rounds.jsonl").read_text() == rounds  # no round ran again
    assert code in (0, INTERRUPTED), err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baselines"] and summary["ranking_baselines"] and summary["paired_differences"]


def test_kill_marked_also_kills_what_the_marked_processes_fork_meanwhile():
    """A marked shell that forks a marked child every few milliseconds: one sweep would
    leave the children forked while it ran; ``kill_marked`` sweeps until none is left.
    """
    token = f"test-{time.monotonic_ns()}"
    marked = [f"{TOKEN_ENV}={token}"]
    spawner = subprocess.Popen(
        ["bash", "-c", "while true; do sleep 60 & sleep 0.005; done"],
        env={"PATH": "/usr/bin:/bin", TOKEN_ENV: token},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + LIMIT
        while len(processes_marked(marked)) < 20:
            assert time.monotonic() < deadline, "the spawner did not fork"
            time.sleep(0.05)
        kill_marked(marked)
        assert processes_marked(marked) == []
    finally:
        spawner.kill()
        spawner.wait(timeout=LIMIT)
        subprocess.run(["pkill", "-KILL", "-s", str(spawner.pid)], check=False)
