"""Collaborative soft tokens (CoLLM-style): a small projector maps a user's and an item's
collaborative embeddings into the backbone's hidden space, and the projections are added
to the residual stream of two slot tokens of the prompt at the split layer.

Adding at the split layer, not at the token embeddings, keeps the frozen layers' cached
states valid (the slots' lower-layer states are those of their plain text) and puts
the projector's gradient only a LoRA stack away from the loss. The projector has no
biases and a zero-initialised output layer: zero embeddings, or a fresh projector,
leave every score exactly as the text alone gives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJECTOR_PREFIX = "soft_tokens."  # names of the projector's tensors beside peft's adapter tensors


class SoftTokenProjector(nn.Module):
    """``Linear -> GELU -> Linear``, without biases, from ``signal_dim`` to ``hidden_size``."""

    def __init__(self, signal_dim: int, hidden_size: int, width: int = 64) -> None:
        super().__init__()
        self.signal_dim = signal_dim
        self.inner = nn.Linear(signal_dim, width, bias=False)
        self.outer = nn.Linear(width, hidden_size, bias=False)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        """``[B, slots, signal_dim]`` -> ``[B, slots, hidden_size]``."""
        return self.outer(F.gelu(self.inner(signals)))

    def reset(self, seed: int) -> None:
        """Seeded initialisation (the same on every node): the inner layer as torch's
        default, the outer one zero.
        """
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / self.signal_dim**0.5
        with torch.no_grad():
            inner = torch.empty(self.inner.weight.shape).uniform_(-bound, bound, generator=generator)
            self.inner.weight.copy_(inner)
            self.outer.weight.zero_()


def add_at_slots(states: torch.Tensor, tokens: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """``states`` ``[B, T, d]`` (left-padded: a slot sits at ``T - offset`` in every row)
    plus ``tokens[:, s]`` at slot ``s``'s position; differentiable in ``tokens``.
    """
    length = states.shape[1]
    added = states
    for slot, offset in enumerate(offsets):
        position = length - offset
        added = added + F.pad(tokens[:, slot : slot + 1].to(states.dtype), (0, 0, position, offset - 1))
    return added
