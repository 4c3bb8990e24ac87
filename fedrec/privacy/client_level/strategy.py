"""Server half of client-level DP: a Strategy wrapper, like Flower's
``DifferentialPrivacyServerSideFixedClipping``, with its own accountant.

``ClientLevelDP(strategy, dp)`` asks every sampled client to clip its update (and, with
distributed noise, to add its share of the noise), forms the unweighted mean of the
survivors' clipped updates (central noise: clips each update again and adds the noise
itself), accounts the release, and hands the wrapped strategy one reply per survivor
carrying ``global + noisy mean``. It composes with any linear strategy: FedAvg's
weighted average of identical adapters is that adapter, and FedAdam, FedYogi or FedAvgM
take the noisy mean as their pseudo-gradient, so the server optimizer only
post-processes a private release. Under secure aggregation (``summed_securely``) the
replies already carry the securely summed mean, and individual updates are never seen.

Each round's release is accounted as a Gaussian mechanism of sensitivity ``clip`` on
the sum. With Flower's fixed-size sampling (without replacement, not Poisson) there is no
amplification: epsilon is over-stated when ``fraction-train`` < 1, and the mean is over
the survivors. With Poisson sampling (``client-sampling = "poisson"``,
:class:`.sampling.PoissonSampling`) the round is accounted as the Poisson-subsampled
Gaussian at rate ``fraction-train``, the sum is divided by the expected sample size
(``fraction-train`` x clients, fixed: DP-FedAvg's estimator), and a round that sampled no
client releases the noise alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ...config import ClientDPConfig
from ...protocol.exchange import DelegatingStrategy
from ...protocol.records import ARRAYS, CLIENT_DP_CLIP, CLIENT_DP_NOISE_STD, CONFIG
from ...protocol.replies import is_declined
from ..ledger import PersistentAccountant
from .mechanism import client_noise_std, clip_update, effective_noise_multiplier
from .sampling import PoissonSampling


class ClientLevelDP(DelegatingStrategy):
    """Wraps ``strategy``; every training round releases a clipped, noised mean."""

    def __init__(
        self, strategy: Strategy, dp: ClientDPConfig, summed_securely: bool = False, seed: int | None = None
    ) -> None:
        """``seed``: of the central noise (reproducible simulations); None draws it from the OS."""
        super().__init__(strategy)
        self.dp, self.summed_securely = dp, summed_securely
        self.sampling = strategy if isinstance(strategy, PoissonSampling) else None
        self.accountant = PersistentAccountant("rdp")
        self.last_noise_multiplier: float | None = None  # of the latest release; None: nothing released
        self.rng = np.random.default_rng(seed)
        self._current: ArrayRecord | None = None
        self._sampled = 0

    def epsilon(self, delta: float) -> float:
        """Client-level epsilon of every release so far."""
        return self.accountant.epsilon(delta)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure as the wrapped strategy, then ask each sampled client to clip."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._current, self._sampled = arrays, len(messages)
        for msg in messages:
            request = msg.content.config_records[CONFIG]
            request[CLIENT_DP_CLIP] = self.dp.client_dp_clip
            request[CLIENT_DP_NOISE_STD] = client_noise_std(self.dp, len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Release the noisy mean in the survivors' replies, then aggregate as the wrapped
        strategy. Under Poisson sampling a round without survivors releases the noise
        alone (the server adds it), so that every round is the accounted mechanism.
        """
        replies = list(replies)
        self.last_noise_multiplier = None
        trained = [r for r in replies if not r.has_error() and not is_declined(r) and ARRAYS in r.content]
        if self._current is None:
            return self.strategy.aggregate_train(server_round, replies)
        if trained:
            self._release(trained, self._current)
        elif self.sampling is not None:
            return self._release_noise_alone(self._current), None
        return self.strategy.aggregate_train(server_round, replies)

    def _denominator(self, survivors: int) -> float:
        """What the sum of clipped updates is divided by: the survivors, or under Poisson
        sampling the expected sample size (fixed, so that one client's presence changes
        the sum only, by at most ``clip``).
        """
        if self.sampling is None:
            return float(survivors)
        return self.sampling.rate * self.sampling.population

    def _release(self, trained: list[Message], current: ArrayRecord) -> None:
        start = {name: array.numpy().astype(np.float64) for name, array in current.items()}
        survivors = len(trained)
        total = self._sum_update(trained, start)
        sigma = effective_noise_multiplier(self.dp, self._sampled, survivors)
        if self.dp.client_dp_noise == "central":
            total = {name: d + noise for (name, d), noise in zip(total.items(), self._noise(total), strict=True)}
        self._account(sigma)
        log(
            INFO,
            "client-level DP: %d of %d sampled clients released, noise multiplier %.3f",
            survivors,
            self._sampled,
            sigma,
        )
        released = self._released(current, start, total, self._denominator(survivors))
        for reply in trained:
            reply.content[ARRAYS] = released

    def _release_noise_alone(self, current: ArrayRecord) -> ArrayRecord:
        """The global adapter plus the mechanism's noise over the expected sample size."""
        start = {name: array.numpy().astype(np.float64) for name, array in current.items()}
        noise = dict(zip(start, self._noise(start), strict=True))
        self._account(self.dp.client_dp_noise_multiplier)
        log(INFO, "client-level DP: no client sampled; the noise alone is released")
        return self._released(current, start, noise, self._denominator(0))

    def _noise(self, like: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The server's Gaussian noise on a sum: ``noise-multiplier * clip`` per value."""
        std = self.dp.client_dp_noise_multiplier * self.dp.client_dp_clip
        return [self.rng.normal(0.0, std, values.shape) for values in like.values()]

    def _account(self, sigma: float) -> None:
        rate = self.sampling.rate if self.sampling is not None else 1.0
        self.accountant.history.append((sigma, rate, 1))
        self.last_noise_multiplier = sigma

    @staticmethod
    def _released(
        current: ArrayRecord, start: dict[str, np.ndarray], total: dict[str, np.ndarray], denominator: float
    ) -> ArrayRecord:
        dtypes = {name: array.numpy().dtype for name, array in current.items()}
        return ArrayRecord(
            {name: Array((start[name] + d / denominator).astype(dtypes[name])) for name, d in total.items()}
        )

    def _sum_update(self, trained: list[Message], start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The sum of the clipped updates (under SecAgg+, the secure mean times the survivors)."""
        if self.summed_securely:
            arrays = trained[0].content[ARRAYS]
            return {
                name: (arrays[name].numpy().astype(np.float64) - values) * len(trained)
                for name, values in start.items()
            }
        total = {name: np.zeros_like(values) for name, values in start.items()}
        for reply in trained:
            arrays = reply.content[ARRAYS]
            if list(arrays.keys()) != list(start):
                raise ValueError(f"node {reply.metadata.src_node_id}: adapter tensors differ from the global adapter's")
            deltas = [arrays[name].numpy().astype(np.float64) - values for name, values in start.items()]
            if self.dp.client_dp_noise == "central":  # the server clips too
                deltas, _ = clip_update(deltas, self.dp.client_dp_clip)
            for name, delta in zip(start, deltas, strict=True):
                total[name] += delta
        return total

    def summary(self) -> None:
        """The wrapped strategy's summary, then the DP settings."""
        self.strategy.summary()
        log(
            INFO,
            "\t├──> client-level DP: clip %s, noise multiplier %s (%s)",
            self.dp.client_dp_clip,
            self.dp.client_dp_noise_multiplier,
            self.dp.client_dp_noise,
        )

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history and the noise generator's state (JSON-able)."""
        return {"history": [list(h) for h in self.accountant.history], "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.rng.bit_generator.state = state["rng"]
