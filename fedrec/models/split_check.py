"""The scorer's self-check at construction: on a padded batch the split forward must
reproduce the model's own forward (else the architecture is refused), and the
last-position top layer is used only where it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import BackboneError
from .prefix_cache import PREFIX_CACHE

if TYPE_CHECKING:
    from .scorer import Scorer

CHECK_TEXTS = ["One two three, four five six. Seven eight nine ten?", "Eleven twelve. Thirteen fourteen?"]


def check_split(scorer: Scorer) -> None:
    """Verify the split forward of ``scorer`` (see the module docstring)."""
    token_lists = scorer.encode(CHECK_TEXTS)
    if scorer.split.last_position_top_layer and split_error(scorer, token_lists) is not None:
        scorer.split.last_position_top_layer = False
    error = split_error(scorer, token_lists)
    if error is not None:
        raise BackboneError(
            f"{scorer.backbone_name}: the split at layer {scorer.split_layer} does not reproduce the "
            f"model's forward ({error}); this architecture is not supported"
        )


def split_error(scorer: Scorer, token_lists: list[list[int]]) -> str | None:
    """How the split scores of ``token_lists`` differ from the full forward's, or None."""
    try:
        with scorer.in_float32():
            split = scorer.score(token_lists, batch_size=len(token_lists)).tolist()
            full = [full_forward_score(scorer, tokens) for tokens in token_lists]
    except (RuntimeError, TypeError, AttributeError) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        for tokens in token_lists:
            PREFIX_CACHE.drop(scorer.cache_key(tokens))
    for s, f in zip(split, full, strict=True):
        if abs(s - f) > 1e-3 * max(1.0, abs(f)):
            return f"{s:.5f} vs {f:.5f}"
    return None


@torch.no_grad()
def full_forward_score(scorer: Scorer, tokens: list[int]) -> float:
    """Score one prompt with the model's own unsplit forward (for checks), under the
    same autocast as the scorer's other paths.
    """
    ids = torch.tensor([tokens], device=next(scorer.peft.parameters()).device)
    if scorer.kind.name != "causal":
        return scorer.head.full_forward(scorer.split, ids)
    with scorer.autocast():
        return scorer.head.full_forward(scorer.split, ids)
