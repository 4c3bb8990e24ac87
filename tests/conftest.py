"""Shared fixtures: tiny random models (fast) and small synthetic datasets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedrec.config import FedRecConfig, TrainingConfig, resolve_config
from fedrec.models.backbone import load_backbone
from fedrec.models.lora import LoraSettings
from fedrec.models.scorer import Scorer
from fedrec.server.owner import OWNER_PID_ENV, processes_marked
from fedrec.simulation.engine import FlowerApp
from fedrec.simulation.runner import federation_config, run_apps, simulate
from fedrec.tasks.preference.prompt import PREFERENCE_QUESTION
from fedrec.tasks.preference.scoring import preference_loss
from fedrec.tasks.training import LocalTraining


def tiny_scorer(top_layers: int = 0, spec: str = "tiny-llama", rank: int = 4, **lora: object) -> Scorer:
    """A tiny random backbone with LoRA of ``rank`` and scale ``alpha / rank = 2``, asked
    the preference question.
    """
    modules = ("q_proj", "v_proj") if spec == "tiny-llama" else ("query", "value")
    settings = LoraSettings(rank=rank, alpha=2.0 * rank, target_modules=modules, top_layers=top_layers, **lora)
    return Scorer(load_backbone(spec), settings, PREFERENCE_QUESTION, max_length=96)


@pytest.fixture
def scorer() -> Scorer:
    return tiny_scorer()


def write_planted_dataset(
    folder: Path, users: int = 40, items: int = 24, per_user: int = 14, seed: int = 0
) -> tuple[Path, Path]:
    """CSV files where half of the items ("good ...") are liked by everyone and the
    other half ("bad ...") by no one: a structure a model can learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        chosen = rng.choice(items, size=per_user, replace=False)
        for t, item in enumerate(chosen):
            rows.append({"user": f"u{u}", "item": int(item), "rating": 5.0 if item % 2 == 0 else 1.0, "timestamp": t})
    inter = folder / "interactions.csv"
    pd.DataFrame(rows).to_csv(inter, index=False)
    names = [("good" if i % 2 == 0 else "bad") + f" film {i}" for i in range(items)]
    item_path = folder / "items.csv"
    pd.DataFrame({"item": range(items), "title": names}).to_csv(item_path, index=False)
    return inter, item_path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One simulation of the smoke preset, shared by the tests that only read its results:
    ``(config, results folder, summary)``.
    """
    cfg = resolve_config("smoke", overrides={"out": str(tmp_path_factory.mktemp("smoke") / "run")})
    out, summary = simulate(cfg)
    return cfg, out, summary


@pytest.fixture
def task_identity():
    """Messages are created inside a run; give this process one, as Flower's runtime does."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def local(
    epochs: int = 1,
    batch_size: int = 16,
    physical_batch_size: int = 16,
    learning_rate: float = 5e-4,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> LocalTraining:
    """One round of local preference training with these keys."""
    training = TrainingConfig(
        local_epochs=epochs, batch_size=batch_size, physical_batch_size=physical_batch_size, learning_rate=learning_rate
    )
    return LocalTraining(training, preference_loss, seed=seed, proximal_mu=proximal_mu)


REPO = Path(__file__).parents[1]


def run_test_apps(serverapp: str, clientapp: str, run_config: dict, federation: dict, out: Path) -> None:
    """Run a ServerApp and a ClientApp named by import strings (``tests.<module>:<app>``
    or fedrec's) with ``flwr run`` on a local SuperLink, as ``fedrec simulate`` does; the
    Flower processes find this folder's modules on ``PYTHONPATH``.
    """
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved) if p)
    try:
        run_apps(FlowerApp(run_config, serverapp, clientapp), federation, out, echo=None)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def run_configured(
    cfg: FedRecConfig, clientapp: str, log_folder: Path, serverapp: str = "fedrec.server.app:app"
) -> None:
    """:func:`run_test_apps` with ``cfg``'s run configuration and federation."""
    run_test_apps(serverapp, clientapp, cfg.to_run_config(), federation_config(cfg), log_folder)


def processes_left_by(owner_pid: int, limit: float = 30.0) -> list[int]:
    """Processes of the run that ``owner_pid`` started still there after ``limit`` seconds
    (a SIGKILLed process may take a moment to go; Flower's SuperExec and simulation
    process are in other sessions).
    """
    deadline = time.monotonic() + limit
    while (left := processes_marked([f"{OWNER_PID_ENV}={owner_pid}"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
