"""Shared fixtures: tiny random models (fast) and small synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedrec.models.backbone import load_backbone
from fedrec.models.scorer import LoraSettings, PreferenceScorer

TINY_LLAMA_LORA = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"))


def tiny_scorer(top_layers: int = 0, spec: str = "tiny-llama", rank: int = 4, **lora: object) -> PreferenceScorer:
    """A tiny random backbone with LoRA of ``rank`` and scale ``alpha / rank = 2``."""
    modules = ("q_proj", "v_proj") if spec == "tiny-llama" else ("query", "value")
    settings = LoraSettings(rank=rank, alpha=2.0 * rank, target_modules=modules, top_layers=top_layers, **lora)
    return PreferenceScorer(load_backbone(spec), settings, max_length=96)


@pytest.fixture
def scorer() -> PreferenceScorer:
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


@pytest.fixture
def task_identity():
    """Messages are created inside a run; give this process one, as Flower's runtime does."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
