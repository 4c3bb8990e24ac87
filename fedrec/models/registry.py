"""One scorer (backbone + LoRA) per process and settings, reused across rounds and clients."""

from __future__ import annotations

import functools

from .backbone import load_backbone
from .lora import LoraSettings
from .precision import resolve_compute_dtype, scoring_device
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
    one is visible, ``compute_dtype`` resolved for it). Callers set the adapter weights
    they need before use.
    """
    device = scoring_device()
    dtype = resolve_compute_dtype(compute_dtype, device)
    scorer = Scorer(load_backbone(backbone), lora, question, max_length, dtype, signal_dim)
    if device == "cuda":
        scorer.to("cuda")
    return scorer
