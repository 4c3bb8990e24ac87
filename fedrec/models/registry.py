"""One scorer (backbone + LoRA) per process and settings, reused across rounds and clients."""

from __future__ import annotations

import functools

import torch

from .backbone import load_backbone
from .lora import LoraSettings
from .prompting import AnswerPrompt
from .scorer import Scorer


@functools.lru_cache(maxsize=4)  # server + up to three client ranks
def shared_scorer(
    backbone: str,
    lora: LoraSettings,
    question: AnswerPrompt,
    max_length: int,
    compute_dtype: str,
    signal_dim: int = 0,
) -> Scorer:
    """The process's scorer for these settings, loaded on first use (on the GPU when
    one is visible). Callers set the adapter weights they need before use.
    """
    scorer = Scorer(load_backbone(backbone), lora, question, max_length, getattr(torch, compute_dtype), signal_dim)
    if torch.cuda.is_available():
        scorer.to("cuda")
    return scorer
