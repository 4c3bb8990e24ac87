"""Crash recovery: a simulation whose process is killed after round 1 resumes from its
checkpoint and ends where an uninterrupted run ends; clients' budgets keep composing.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from safetensors.torch import load_file

from fedrec.cli import main
from fedrec.config import resolve_config
from fedrec.server.checkpoint import CheckpointError, ServerCheckpoint, read_checkpoint, write_checkpoint
from fedrec.server.results import ResultsFolderError
from fedrec.simulation.runner import resume, simulate

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


def _run_until_round(out, last_round: int, limit: float = 420.0) -> None:
    """Run the simulation in a child process and SIGKILL its process group once
    ``rounds.jsonl`` holds ``last_round``.
    """
    code = (
        "from fedrec.config import resolve_config; from fedrec.simulation.runner import simulate; "
        f"simulate(resolve_config('smoke', overrides={dict(OVERRIDES, out=str(out))!r}))"
    )
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL)
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


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference_out, summary = simulate(resolve_config("smoke", overrides={**OVERRIDES, "out": str(tmp_path / "ref")}))
    crashed = tmp_path / "crashed"
    _run_until_round(crashed, 1)
    assert not (crashed / "summary.json").exists(), "the run finished before it was killed"
    assert 1 <= read_checkpoint(crashed).round < OVERRIDES["num-server-rounds"]
    out, resumed = resume(crashed)
    reference, recovered = _rounds(reference_out), _rounds(out)
    assert [r["round"] for r in recovered] == [0, 1, 2, 3]
    for want, got in zip(reference, recovered, strict=True):
        assert got["auc"] == pytest.approx(want["auc"], abs=1e-4)
        assert got.get("epsilon_max") == pytest.approx(want.get("epsilon_max"))  # ledgers kept composing
        assert got.get("client_level_epsilon") == pytest.approx(want.get("client_level_epsilon"))
    assert resumed["epsilon"]["max"] == pytest.approx(summary["epsilon"]["max"])
    assert resumed["client_dp"]["epsilon"] == pytest.approx(summary["client_dp"]["epsilon"])
    want = load_file(str(reference_out / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name, tensor in want.items():
        np.testing.assert_allclose(got[name].numpy(), tensor.numpy(), atol=1e-6)
    initial = read_checkpoint(out)  # the final checkpoint is the final adapter
    assert initial.round == OVERRIDES["num-server-rounds"] and initial.strategy_state["m_t"]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    arrays = ArrayRecord({"b": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    state = {"m_t": {"b": np.ones((2, 3))}, "momentum_vector": [np.zeros(2), np.ones(1)]}
    write_checkpoint(tmp_path, ServerCheckpoint(2, arrays, state, {"python": [3, [1, 2], None]}, {"k": 1}))
    write_checkpoint(tmp_path, ServerCheckpoint(3, arrays, state, {"python": [3, [1, 2], None]}, {"k": 2}))
    back = read_checkpoint(tmp_path)
    assert back.round == 3 and back.state == {"k": 2}
    np.testing.assert_array_equal(back.arrays["b"].numpy(), arrays["b"].numpy())
    np.testing.assert_array_equal(back.strategy_state["m_t"]["b"], np.ones((2, 3)))
    assert [v.tolist() for v in back.strategy_state["momentum_vector"]] == [[0.0, 0.0], [1.0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no staging folders left
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "elsewhere")


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    cfg = resolve_config("smoke", overrides={"num-server-rounds": 1, "ranking-users": 0, "out": str(tmp_path / "r")})
    out, _ = simulate(cfg)
    (out / "summary.json").rename(out / "summary.moved")  # as if it had stopped before the end
    changed = cfg.replace(out=str(out), resume=True, learning_rate=0.5, client_state_dir=str(out / "nodes"))
    with pytest.raises(ResultsFolderError, match="learning-rate"):
        simulate(changed)
    (out / "summary.moved").rename(out / "summary.json")
    with pytest.raises(ResultsFolderError, match="finished run"):
        resume(out)


def test_cli_resume_of_a_folder_without_a_run_is_refused(tmp_path, capsys):
    assert main(["simulate", "--resume", str(tmp_path)]) == 2
    assert "config.toml does not exist" in capsys.readouterr().err
