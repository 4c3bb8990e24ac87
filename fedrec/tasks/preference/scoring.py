"""The preference task's model and loss: the process's scorer for a run's settings,
asking the preference question, and binary cross-entropy on its Yes/No margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import FedRecConfig
from ...models.lora import LoraSettings
from ...models.registry import shared_scorer
from ...models.scorer import Scorer
from .prompt import HYBRID_PREFERENCE_QUESTION, PREFERENCE_QUESTION


def scorer_for(cfg: FedRecConfig, rank: int | None = None) -> Scorer:
    """The process-wide scorer (backbone + LoRA of ``rank``, default the global rank, and
    the soft tokens' projector with ``llm-input = 'hybrid'``); the server's initial
    adapter is drawn from ``seed``.
    """
    lora = LoraSettings.of(cfg.model, cfg.freeze_lora_a, cfg.federation.seed, rank)
    model = cfg.model
    if model.llm_input == "hybrid":
        question, signal_dim = HYBRID_PREFERENCE_QUESTION, cfg.collaborative.mf_dim + 1
    else:
        question, signal_dim = PREFERENCE_QUESTION, 0
    return shared_scorer(model.backbone, lora, question, model.max_length, model.compute_dtype, signal_dim)


def preference_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the like labels on the scores (logits)."""
    return F.binary_cross_entropy_with_logits(scores, labels)
