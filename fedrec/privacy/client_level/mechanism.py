"""Client-level DP's arithmetic: clipping an update, and the noise of each share."""

from __future__ import annotations

import math

import numpy as np

from ...config import ClientDPConfig


def client_noise_std(dp: ClientDPConfig, sampled: int) -> float:
    """Each client's noise share when ``sampled`` clients add it (0 when central)."""
    distributed = dp.client_dp_noise == "distributed"
    return dp.client_dp_noise_multiplier * dp.client_dp_clip / math.sqrt(sampled) if distributed else 0.0


def effective_noise_multiplier(dp: ClientDPConfig, sampled: int, survivors: int) -> float:
    """Noise std on the survivors' sum, in units of the clip: with distributed noise only
    ``survivors / sampled`` of the variance arrived.
    """
    if dp.client_dp_noise == "distributed":
        return dp.client_dp_noise_multiplier * math.sqrt(survivors / sampled)
    return dp.client_dp_noise_multiplier


def clip_update(deltas: list[np.ndarray], clip: float) -> tuple[list[np.ndarray], float]:
    """``deltas`` scaled to L2 norm at most ``clip`` (jointly over all tensors), and the
    norm before clipping.
    """
    norm = math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in deltas))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return [d * scale for d in deltas], norm
