"""Model kinds: what differs between a causal LM and an encoder backbone (padding side,
positions, the trunk, the trainable modules besides LoRA, and the head). A new kind is
one subclass of :class:`ModelKind` added to :data:`KINDS`.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn

from .heads import AnswerMarginHead, Head, PooledLinearHead
from .prompting import PromptFormat


class ModelKind:
    """How fedrec wraps, splits and scores one kind of backbone."""

    name = ""
    left_padding = False
    save_modules: tuple[str, ...] = ()  # trainable modules besides LoRA (peft's modules_to_save)

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` is of this kind."""
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module LoRA is attached to (the backbone, or the backbone with a head)."""
        return model

    def trunk(self, base: nn.Module) -> nn.Module:
        """The transformer trunk of ``wrap``'s module (embeddings, layers, final norm)."""
        raise NotImplementedError

    def positions(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Position ids of a padded batch (None: the model's own)."""
        return None

    def head(self, peft: PeftModel, prompt: PromptFormat) -> Head:
        """The head that maps hidden states to a score."""
        raise NotImplementedError


class CausalLMKind(ModelKind):
    """A causal LM, left-padded, scored by the margin of two answer tokens' logits."""

    name = "causal"
    left_padding = True

    def matches(self, model: nn.Module) -> bool:  # noqa: D102
        return model.get_output_embeddings() is not None

    def trunk(self, base: nn.Module) -> nn.Module:  # noqa: D102
        return base.base_model

    def positions(self, mask: torch.Tensor) -> torch.Tensor | None:
        """``cumsum(mask) - 1``: left padding must not shift the positions."""
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def head(self, peft: PeftModel, prompt: PromptFormat) -> Head:  # noqa: D102
        assert prompt.answer_ids is not None
        return AnswerMarginHead(peft, prompt.answer_ids)


class EncoderWithHead(nn.Module):
    """An encoder trunk with a linear scoring head over mean-pooled states."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        self.config = encoder.config


class EncoderKind(ModelKind):
    """A bidirectional encoder, right-padded, scored by a trainable linear head."""

    name = "encoder"
    save_modules = ("head",)

    def matches(self, model: nn.Module) -> bool:  # noqa: D102
        return model.get_output_embeddings() is None

    def wrap(self, model: nn.Module) -> nn.Module:  # noqa: D102
        return EncoderWithHead(model)

    def trunk(self, base: nn.Module) -> nn.Module:  # noqa: D102
        return base.encoder

    def head(self, peft: PeftModel, prompt: PromptFormat) -> Head:  # noqa: D102
        return PooledLinearHead(peft)


KINDS: tuple[ModelKind, ...] = (CausalLMKind(), EncoderKind())


def kind_of(model: nn.Module) -> ModelKind:
    """The registered kind of ``model``."""
    return next(kind for kind in KINDS if kind.matches(model))
