"""Crash recovery: a simulation whose process is killed after round 1 resumes from its
checkpoint and ends where an uninterrupted run ends; clients' budgets keep composing.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import load_file

from fedrec.cli import main
from fedrec.client.app import build_client_app
from fedrec.config import FedRecConfig, read_config_file, resolve_config
from fedrec.privacy.ledger import load_ledger
from fedrec.protocol.exchange import DelegatingGrid
from fedrec.server.app import run_server
from fedrec.server.checkpoint import CheckpointError, ServerCheckpoint, read_checkpoint, write_checkpoint
from fedrec.server.results import ResultsFolderError, ResultsWriter, check_fresh, failure
from fedrec.simulation.runner import absolute_paths, resume, simulate
from tests.conftest import REPO, processes_left_by, run_configured

OVERRIDES = {
    "num-server-rounds": 3,
    "strategy": "fedadam",  # server optimizer state must survive
    "lora-freeze-a": True,
    "client-dp": True,  # server-side noise generator and accountant must survive
    "client-dp-clip": 0.05,
    "client-dp-noise-multiplier": 0.5,
    "ranking-users": 0,
}


def _rounds(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _round(msg: Message) -> int:
    return int(msg.content["config"]["server-round"])


def _stall_round_two(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Round 2's training waits (before it charges any ledger) until the run is killed."""
    if msg.metadata.message_type == MessageType.TRAIN and _round(msg) == 2:
        time.sleep(600)
    return call_next(msg, context)


stall_round_two_app = build_client_app(outer_mods=[_stall_round_two])


class _FailInRoundTwo(DelegatingGrid):
    """A grid that breaks when round 2's messages are sent (after round 1's checkpoint)."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        if any(m.metadata.message_type == MessageType.TRAIN and _round(m) == 2 for m in messages):
            raise RuntimeError("the grid broke in round 2")
        return super().push_messages(messages)


fail_in_round_two_app = ServerApp()


@fail_in_round_two_app.main()
def _fail_in_round_two(grid: Grid, context: Context) -> None:
    run_server(_FailInRoundTwo(grid), FedRecConfig.from_mapping(context.run_config))


def _run_until_round(out, last_round: int, limit: float = 420.0) -> None:
    """Run the simulation in a child process, its clients stalling in round 2, and SIGKILL
    the child's process group once ``rounds.jsonl`` holds ``last_round``.
    """
    code = (
        "from pathlib import Path; from fedrec.config import resolve_config; "
        "from fedrec.simulation.runner import absolute_paths, federation_config; "
        "from tests.conftest import run_test_apps; "
        f"cfg = absolute_paths(resolve_config('smoke', overrides={dict(OVERRIDES, out=str(out))!r})); "
        "run_test_apps('fedrec.server.app:app', 'tests.test_resume:stall_round_two_app', cfg.to_run_config(), "
        "federation_config(cfg), Path(cfg.server.out))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and child.poll() is None:
            path = out / "rounds.jsonl"
            if path.exists() and any(json.loads(line)["round"] >= last_round for line in path.read_text().splitlines()):
                break
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    left = processes_left_by(child.pid)  # the ServerApp stops its run when its owner is gone
    assert not left, f"processes of the killed run still run: {left}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its folder and summary."""
    return simulate(
        resolve_config("smoke", overrides={**OVERRIDES, "out": str(tmp_path_factory.mktemp("ref") / "run")})
    )


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, reference):
    reference_out, summary = reference
    crashed = tmp_path / "crashed"
    _run_until_round(crashed, 1)
    assert not (crashed / "summary.json").exists(), "the run finished before it was killed"
    assert 1 <= read_checkpoint(crashed).round < OVERRIDES["num-server-rounds"]
    out, resumed = resume(crashed)
    reference, recovered = _rounds(reference_out), _rounds(out)
    assert [r["round"] for r in recovered] == [0, 1, 2, 3]
    for want, got in zip(reference, recovered, strict=True):
        assert got["auc"] == pytest.approx(want["auc"], abs=1e-4)
        assert got.get("client_level_epsilon") == pytest.approx(want.get("client_level_epsilon"))
    assert resumed["client_dp"]["epsilon"] == pytest.approx(summary["client_dp"]["epsilon"])
    # the nodes' ledgers kept composing across the kill: the reference's charges, no more, no less
    ledgers = [load_ledger(p, "rdp") for p in sorted(out.glob("nodes/partition-*/privacy-ledger.json"))]
    expected = [load_ledger(p, "rdp") for p in sorted(reference_out.glob("nodes/partition-*/privacy-ledger.json"))]
    assert len(ledgers) == 3 and ledgers == expected and ledgers[0].steps > 0
    for want, got in zip(reference, recovered, strict=True):
        assert got.get("epsilon_max") == pytest.approx(want.get("epsilon_max"))
    assert resumed["epsilon"]["max"] == pytest.approx(summary["epsilon"]["max"])
    want = load_file(str(reference_out / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name, tensor in want.items():
        np.testing.assert_allclose(got[name].numpy(), tensor.numpy(), atol=1e-6)
    initial = read_checkpoint(out)  # the final checkpoint is the final adapter
    assert initial.round == OVERRIDES["num-server-rounds"] and initial.strategy_state["m_t"]


def test_a_failed_run_is_marked_and_set_aside_by_a_new_run_or_reopened_by_resume(tmp_path):
    cfg = absolute_paths(resolve_config("smoke", overrides=dict(OVERRIDES, out=str(tmp_path / "failed"))))
    out = Path(cfg.server.out)
    run_configured(cfg, "fedrec.client.app:app", out, serverapp="tests.test_resume:fail_in_round_two_app")
    assert failure(out) == "RuntimeError: the grid broke in round 2"
    assert read_checkpoint(out).round == 1 and not (out / "summary.json").exists()
    check_fresh(out)  # a new run may take the folder: it sets the failed run aside
    kept = sorted(p.relative_to(out) for p in out.rglob("*"))
    writer = ResultsWriter(out, cfg.to_run_config())
    aside = tmp_path / "failed.failed-1"
    assert writer.set_aside == aside and sorted(p.relative_to(aside) for p in aside.rglob("*")) == kept
    assert sorted(p.name for p in out.iterdir()) == ["config.toml"]
    # or --resume reopens it (as the killed run's test resumes one): no longer marked failed
    reopened = ResultsWriter(aside, cfg.replace(resume=True).to_run_config(), resume_after=1)
    assert failure(aside) is None and [r["round"] for r in reopened.rounds] == [0, 1]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    arrays = ArrayRecord({"b": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    state = {"m_t": {"b": np.ones((2, 3))}, "momentum_vector": [np.zeros(2), np.ones(1)]}
    write_checkpoint(tmp_path, ServerCheckpoint(2, arrays, state, {"k": 1}))
    write_checkpoint(tmp_path, ServerCheckpoint(3, arrays, state, {"k": 2}))
    back = read_checkpoint(tmp_path)
    assert back.round == 3 and back.state == {"k": 2}
    np.testing.assert_array_equal(back.arrays["b"].numpy(), arrays["b"].numpy())
    np.testing.assert_array_equal(back.strategy_state["m_t"]["b"], np.ones((2, 3)))
    assert [v.tolist() for v in back.strategy_state["momentum_vector"]] == [[0.0, 0.0], [1.0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no staging folders left
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "elsewhere")


def test_resume_refuses_a_run_with_other_settings(tmp_path, reference):
    out = Path(shutil.copytree(reference[0], tmp_path / "r"))
    (out / "summary.json").rename(out / "summary.moved")  # as if it had stopped before the end
    stored = FedRecConfig.from_mapping(read_config_file(out / "config.toml"))
    changed = stored.replace(out=str(out), resume=True, learning_rate=0.5)
    with pytest.raises(ResultsFolderError, match="learning-rate"):
        simulate(changed)
    (out / "summary.moved").rename(out / "summary.json")
    with pytest.raises(ResultsFolderError, match="finished run"):
        resume(out)


def test_cli_resume_of_a_folder_without_a_run_is_refused(tmp_path, capsys):
    assert main(["simulate", "--resume", str(tmp_path)]) == 2
    assert "config.toml does not exist" in capsys.readouterr().err
