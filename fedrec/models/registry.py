"""One scorer (backbone + LoRA) per process, reused across rounds and clients."""

from __future__ import annotations

import functools

import torch

from .backbone import load_backbone
from .scorer import LoraSettings, PreferenceScorer


@functools.lru_cache(maxsize=4)  # server + up to three client ranks
def shared_scorer(backbone: str, lora: LoraSettings, max_length: int, compute_dtype: str) -> PreferenceScorer:
    """The process's scorer for these settings, loaded on first use (on the GPU when
    one is visible). Callers set the adapter weights they need before use.
    """
    scorer = PreferenceScorer(load_backbone(backbone), lora, max_length, getattr(torch, compute_dtype))
    if torch.cuda.is_available():
        scorer.to("cuda")
    return scorer
