"""Server side of client-level DP (:mod:`fedrec.privacy.client_dp`): a ``Grid`` wrapper.

``strategy.start(grid=ClientDPGrid(grid, settings))`` asks every sampled client to clip
its update (and, with distributed noise, to add its share of the noise), forms the
unweighted mean of the survivors' clipped updates (central noise: adds the noise
itself), accounts the round, and hands the strategy one reply per survivor carrying
``global + noisy mean``. Like :class:`~fedrec.server.secagg_grid.SecAggGrid`, this
composes with any linear strategy: FedAvg's weighted average of identical adapters is
that adapter, and FedAdam, FedYogi or FedAvgM take the noisy mean as their
pseudo-gradient, so the server optimizer only post-processes a private release.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType
from flwr.serverapp import Grid
from flwr.supercore import log

from ..privacy.accountant import PersistentAccountant
from ..privacy.client_dp import CLIP_KEY, NOISE_STD_KEY, ClientDPSettings, clip_update
from ..strategies.aggregation import is_declined
from .delegating_grid import DelegatingGrid


class ClientDPGrid(DelegatingGrid):
    """Delegates to ``grid``; train rounds release a clipped, noised mean.

    ``summed_securely``: ``grid`` is a :class:`SecAggGrid` whose replies already carry
    the (uniformly weighted) mean, so individual updates are never seen here.
    """

    def __init__(self, grid: Grid, settings: ClientDPSettings, summed_securely: bool = False, seed: int = 0) -> None:
        super().__init__(grid)
        self.settings = settings
        self.summed_securely = summed_securely
        self.accountant = PersistentAccountant("rdp")
        self.last_noise_multiplier: float | None = None  # of the latest release; None: nothing released
        self.rng = np.random.default_rng(seed)

    def epsilon(self, delta: float) -> float:
        """Client-level epsilon of every release so far."""
        return self.accountant.epsilon(delta)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Train rounds are clipped, noised and accounted; anything else is forwarded."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        self.last_noise_multiplier = None
        sampled = len(messages)
        for msg in messages:
            config = msg.content.config_records["config"]
            config[CLIP_KEY] = self.settings.clip
            config[NOISE_STD_KEY] = self.settings.client_noise_std(sampled)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        trained = [r for r in replies if not r.has_error() and not is_declined(r) and "arrays" in r.content]
        if not trained:
            return replies
        start = {name: array.numpy().astype(np.float64) for name, array in messages[0].content["arrays"].items()}
        mean = self._mean_update(trained, start)
        survivors = len(trained)
        sigma = self.settings.effective_noise_multiplier(sampled, survivors)
        if not self.settings.distributed:
            std = self.settings.noise_multiplier * self.settings.clip / survivors
            mean = {name: d + self.rng.normal(0.0, std, d.shape) for name, d in mean.items()}
        self.accountant.history.append((sigma, 1.0, 1))
        self.last_noise_multiplier = sigma
        log(
            INFO, "client-level DP: %d of %d sampled clients released, noise multiplier %.3f", survivors, sampled, sigma
        )
        dtypes = {name: array.numpy().dtype for name, array in messages[0].content["arrays"].items()}
        released = ArrayRecord({name: Array((start[name] + d).astype(dtypes[name])) for name, d in mean.items()})
        for reply in trained:
            reply.content["arrays"] = released
        return replies

    def _mean_update(self, trained: list[Message], start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The unweighted mean of the clipped updates (already summed under SecAgg+)."""
        if self.summed_securely:
            arrays = trained[0].content["arrays"]
            return {name: arrays[name].numpy().astype(np.float64) - values for name, values in start.items()}
        total = {name: np.zeros_like(values) for name, values in start.items()}
        for reply in trained:
            arrays = reply.content["arrays"]
            if list(arrays.keys()) != list(start):
                raise ValueError(f"node {reply.metadata.src_node_id}: adapter tensors differ from the global adapter's")
            deltas = [arrays[name].numpy().astype(np.float64) - values for name, values in start.items()]
            if not self.settings.distributed:  # central: the server clips too
                deltas, _ = clip_update(deltas, self.settings.clip)
            for name, delta in zip(start, deltas, strict=True):
                total[name] += delta
        return {name: values / len(trained) for name, values in total.items()}
