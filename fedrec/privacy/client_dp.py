"""Client-level differential privacy: each client's adapter update is clipped to an
L2 bound ``C`` and Gaussian noise of standard deviation ``sigma * C`` is added to the
sum of the updates (McMahan et al., 2018), with a server-side RDP accountant.

Two places for the noise (config key ``client-dp-noise``):

- ``central``: the server adds ``N(0, (sigma C)^2)`` to the sum of the survivors'
  clipped updates. Without secure aggregation the server also clips every update
  itself, so the guarantee does not rest on clients clipping honestly.
- ``distributed``: each of the ``m`` sampled clients adds ``N(0, (sigma C)^2 / m)`` to
  its clipped update before it is masked (SecAgg+), so the server never holds an
  un-noised sum. When only ``s < m`` clients survive, the sum carries
  ``s / m`` of the variance: the round is accounted with ``sigma * sqrt(s / m)``.

The mean is unweighted (every client's update counts once), and a round's release is
accounted as a Gaussian mechanism of sensitivity ``C`` without sampling amplification
(Flower samples a fixed number of clients without replacement, not Poisson), which
over-states epsilon when ``fraction-train`` < 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

CLIP_KEY = "client-dp-clip"  # train config: the L2 bound on the update
NOISE_STD_KEY = "client-dp-noise-std"  # train config: this client's share of the noise (0: central)
WEIGHT_KEY = "client-dp-weight"  # reply metric: 1, the uniform weight of a client-level DP mean
NORM_KEY = "update-norm"  # reply metric: the update's L2 norm before clipping


@dataclass(frozen=True)
class ClientDPSettings:
    """Clipping bound, noise multiplier and where the noise is added."""

    clip: float = 1.0
    noise_multiplier: float = 1.0
    distributed: bool = False

    def client_noise_std(self, sampled: int) -> float:
        """Each client's noise share when ``sampled`` clients add it (0 when central)."""
        return self.noise_multiplier * self.clip / math.sqrt(sampled) if self.distributed else 0.0

    def effective_noise_multiplier(self, sampled: int, survivors: int) -> float:
        """Noise std on the survivors' sum, in units of ``clip``."""
        return self.noise_multiplier * math.sqrt(survivors / sampled) if self.distributed else self.noise_multiplier


def clip_update(deltas: list[np.ndarray], clip: float) -> tuple[list[np.ndarray], float]:
    """``deltas`` scaled to L2 norm at most ``clip`` (jointly over all tensors), and the
    norm before clipping.
    """
    norm = math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in deltas))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return [d * scale for d in deltas], norm


def client_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the trained adapter's update (and add this client's noise share) when the
    train config asks for client-level DP; other messages pass unchanged.
    """
    config = msg.content.config_records.get("config")
    if msg.metadata.message_type != MessageType.TRAIN or config is None or CLIP_KEY not in config:
        return call_next(msg, context)
    clip, noise_std = float(config[CLIP_KEY]), float(config.get(NOISE_STD_KEY, 0.0))
    if clip <= 0 or noise_std < 0:
        raise ValueError(f"client-level DP needs clip > 0 and noise std >= 0, got {clip} and {noise_std}")
    global_arrays = msg.content.array_records["arrays"]
    reply = call_next(msg, context)
    trained = reply.content.array_records.get("arrays") if not reply.has_error() else None
    if trained is None:  # an error or a declined round: nothing released
        return reply
    if list(trained.keys()) != list(global_arrays.keys()):
        raise ValueError("the trained adapter's tensors differ from the global adapter's")
    start = [global_arrays[n].numpy().astype(np.float64) for n in trained]
    deltas, norm = clip_update(
        [trained[n].numpy().astype(np.float64) - s for n, s in zip(trained, start, strict=True)], clip
    )
    rng = np.random.default_rng()  # OS entropy: the noise must not be reproducible by anyone
    released = {
        name: Array((s + d + rng.normal(0.0, noise_std, d.shape)).astype(trained[name].numpy().dtype))
        for name, s, d in zip(trained, start, deltas, strict=True)
    }
    reply.content["arrays"] = ArrayRecord(released)
    metrics = reply.content.metric_records["metrics"]
    reply.content["metrics"] = MetricRecord({**dict(metrics), NORM_KEY: norm, WEIGHT_KEY: 1})
    return reply
