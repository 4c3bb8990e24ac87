"""Poisson sampling of clients, whose privacy amplification client-level DP accounts.

Flower's strategies draw a fixed number of clients without replacement; the
subsampled-Gaussian analysis of Opacus's accountants is for Poisson sampling, where each
client takes part independently with probability ``rate``. :class:`PoissonSampling`
wraps a strategy configured to address every node (``fraction-train`` 1) and keeps each
training message with probability ``rate``; the sample size varies, and may be zero.
The draw comes from the server's generator (seeded by the run's seed, or by the OS with
``secure-noise``): amplification protects the released model from those who do not
know the sample; the server itself knows whom it sampled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ...protocol.exchange import DelegatingStrategy


class PoissonSampling(DelegatingStrategy):
    """Wraps ``strategy``; each round trains the nodes that an independent coin of bias ``rate`` picked."""

    def __init__(self, strategy: Strategy, rate: float, rng: np.random.Generator) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
        super().__init__(strategy)
        self.rate, self.rng = rate, rng
        self.population = 0  # nodes the latest round drew from

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's message to every node, each kept with probability ``rate``."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.population = len(messages)
        picked = self.rng.random(len(messages)) < self.rate
        return [msg for msg, keep in zip(messages, picked, strict=True) if keep]

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (JSON-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.rng.bit_generator.state = state["rng"]
