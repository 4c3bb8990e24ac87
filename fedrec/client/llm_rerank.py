"""The LLM's side of on-device recommendation: the adapter run's scorer with its
adapter, and its scores of candidate items after one user's history (a hybrid adapter's
soft tokens from item tables, the user folded in here). Imports the LLM stack (torch,
transformers, peft), so :mod:`.recommend` loads it only when an adapter is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError

from ..config import ConfigError, FedRecConfig
from ..data.interactions import DataError, InteractionData
from ..models.adapter import load_adapter_state, read_adapter_folder
from ..models.errors import BackboneError
from ..models.scorer import Scorer
from ..models.wire import AdapterMismatchError
from ..tasks.collaborative.folded import FoldedInTables
from ..tasks.preference.dataset import prompt_data
from ..tasks.preference.examples import PreferenceExample
from ..tasks.preference.prompt import render_preference_prompt
from ..tasks.preference.scoring import scorer_for
from ..tasks.preference.signals import CollaborativeSignals
from .inputs import LOCAL_USER, RecommendError, run_config


def adapter_run(adapter_dir: Path, config: FedRecConfig | str | Path | None) -> tuple[FedRecConfig, InteractionData]:
    """The adapter run's config and catalog (the folder checked to exist)."""
    try:
        if not adapter_dir.is_dir():
            problem = "is not a folder" if adapter_dir.exists() else "does not exist"
            raise AdapterMismatchError(f"adapter folder {adapter_dir} {problem}")
        cfg = config if isinstance(config, FedRecConfig) else run_config(adapter_dir, config)
        return cfg, prompt_data(cfg.data)
    except (ConfigError, DataError, AdapterMismatchError) as err:
        raise RecommendError(str(err)) from None


def read_adapter(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The adapter folder's tensors, read once for many histories."""
    try:
        return read_adapter_folder(adapter_dir)
    except SafetensorError as err:
        raise RecommendError(f"{adapter_dir}: adapter_model.safetensors cannot be read: {err}") from None
    except AdapterMismatchError as err:
        raise RecommendError(str(err)) from None


def adapter_scorer(cfg: FedRecConfig, adapter: dict[str, torch.Tensor], source: Path) -> Scorer:
    """The run's (process-wide) scorer holding ``adapter`` (read from folder ``source``)."""
    try:
        scorer = scorer_for(cfg)
        load_adapter_state(scorer, adapter, str(source))  # names, shapes, dtypes and finite values checked
    except (AdapterMismatchError, BackboneError) as err:
        raise RecommendError(str(err)) from None
    return scorer


def llm_scores(
    cfg: FedRecConfig,
    data: InteractionData,
    scorer: Scorer,
    rated: pd.DataFrame,
    pool: list[str],
    item_tables: str | Path | None,
) -> np.ndarray:
    """The adapter's score of each item of ``pool`` after the history; a hybrid adapter's
    soft tokens come from ``item_tables`` (default: the ones it was trained with) and the
    user folded in from the history, here.
    """
    liked = rated["rating"].to_numpy() > cfg.data.like_threshold
    recent = tuple(zip(rated["item"], liked.tolist(), strict=True))[-cfg.data.history_length :]
    examples = [PreferenceExample(LOCAL_USER, item, 0, recent) for item in pool]
    prompts = [render_preference_prompt(example, data.prompt_names, data.noun) for example in examples]
    signals = None
    if scorer.projector is not None:
        tables = item_tables or cfg.collaborative.item_tables
        user = rated.assign(user=LOCAL_USER)
        try:
            folded = FoldedInTables.from_file(
                tables, data.items["item"], user, cfg.data.like_threshold, [LOCAL_USER], cfg.collaborative.mf_dim
            )
        except ValueError as err:
            raise RecommendError(f"the adapter reads collaborative soft tokens (llm-input = 'hybrid'): {err}") from None
        signals = CollaborativeSignals(folded).of(examples)
    return scorer.score_candidates(scorer.encode(prompts), cfg.training.physical_batch_size, signals).numpy()
