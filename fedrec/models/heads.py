"""Heads: from the hidden states above the split to one score per prompt.

Heads are plain objects that read the peft model's own modules (the LM's output
embedding, the encoder's trainable head), never submodules of their own, so Opacus
hooks each trainable module once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from peft import PeftModel

if TYPE_CHECKING:
    from .packing import PackedGroups
    from .split import SplitForward


class Head(Protocol):
    """Maps split-layer states to scores, and scores a full forward of one prompt."""

    def __call__(self, split: SplitForward, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scores of a padded batch (runs under the caller's autocast)."""
        ...

    def full_forward(self, split: SplitForward, ids: torch.Tensor) -> float:
        """The score of one prompt by the model's own unsplit forward."""
        ...

    def reset(self) -> None:
        """Re-initialise the head's trainable parameters (after the global seed is set)."""
        ...


class AnswerMarginHead:
    """``logit(positive) - logit(negative)`` of a causal LM's next token, computing only
    those two rows of the output projection.
    """

    def __init__(self, peft: PeftModel, answer_ids: torch.Tensor) -> None:
        self.peft, self.answer_ids = peft, answer_ids

    def weight(self, device: torch.device) -> torch.Tensor:
        """The output embedding rows of the two answers."""
        return self.peft.get_output_embeddings().weight[self.answer_ids.to(device)]

    def __call__(self, split: SplitForward, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._answer_margin(split.last_hidden(states, mask))

    def packed(self, split: SplitForward, packed: PackedGroups, states: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, G]`` of packed groups (:mod:`.packing`) from their split-layer ``states``."""
        return self._answer_margin(split.packed_answer_hidden(packed, states))

    def margin(self, last: torch.Tensor) -> torch.Tensor:
        """Scores from final hidden states ``[B, d]``, on the CPU."""
        return self._answer_margin(last).cpu()

    def _answer_margin(self, last: torch.Tensor) -> torch.Tensor:
        """Scores from final hidden states ``[..., d]``, projected in float32 outside
        autocast (a bfloat16 logit near 10 is only resolved to 0.06).
        """
        with torch.autocast(last.device.type, enabled=False):
            logits = F.linear(last.float(), self.weight(last.device).float())
        return logits[..., 0] - logits[..., 1]

    def full_forward(self, split: SplitForward, ids: torch.Tensor) -> float:  # noqa: D102
        last = split.trunk(input_ids=ids).last_hidden_state[:, -1].float()
        return float(self.margin(last)[0])

    def reset(self) -> None:
        """Nothing to reset: the LM's output embedding is frozen."""


class PooledLinearHead:
    """A trainable linear map of an encoder's mean-pooled final states."""

    def __init__(self, peft: PeftModel) -> None:
        self.peft = peft

    @property
    def module(self) -> torch.nn.Module:
        """The trainable copy of the head peft keeps (``modules_to_save``)."""
        return self.peft.base_model.model.head

    def __call__(self, split: SplitForward, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        hidden = split.hidden(states, mask).float()
        with torch.autocast(hidden.device.type, enabled=False):
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            return self.module(pooled).squeeze(-1)

    def full_forward(self, split: SplitForward, ids: torch.Tensor) -> float:  # noqa: D102
        hidden = split.trunk(input_ids=ids).last_hidden_state
        return float(self.module(hidden.mean(1)).squeeze())

    def reset(self) -> None:  # noqa: D102
        self.module.modules_to_save["default"].reset_parameters()
