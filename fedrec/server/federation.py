"""The layers a run composes around Flower's grid and the configured strategy:
recording every message, SecAgg+ (a grid wrapper), Poisson sampling of clients and
client-level DP (strategy wrappers), and their joint state for checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..config import FedRecConfig
from ..privacy.client_level.sampling import PoissonSampling
from ..privacy.client_level.strategy import ClientLevelDP
from ..privacy.secagg.grid import SecAggGrid, masking_parameters, require_linear_strategy
from ..protocol.records import CLIENT_DP_WEIGHT, NUM_EXAMPLES, TRAIN_LOSS
from ..strategies import AdapterAggregation, build_strategy
from .checkpoint import restore_strategy_state, strategy_state
from .recording_grid import RecordingGrid

SAMPLING_STREAM = 1  # the node-sampling generator's stream of the run's seed


@dataclass
class Federation:
    """The strategy ``start`` runs and the grid it runs on, with the layers in between."""

    aggregation: AdapterAggregation  # the configured strategy: declines, exclusions, rank completion
    recording: RecordingGrid
    secure: SecAggGrid | None = None
    sampling: PoissonSampling | None = None
    client_dp: ClientLevelDP | None = None

    @property
    def strategy(self) -> Strategy:
        """The outermost strategy (client-level DP around Poisson sampling around the
        configured one, each when on).
        """
        return self.client_dp or self.sampling or self.aggregation

    @property
    def grid(self) -> Grid:
        """The outermost grid (SecAgg+ over the recording grid, when on)."""
        return self.secure or self.recording

    def state_dict(self) -> dict[str, Any]:
        """The JSON-able state of the layers; the strategy's optimizer arrays are in
        :meth:`optimizer_state`.
        """
        state: dict[str, Any] = {"python_random": _random_state()}
        if self.secure is not None:
            state["secagg"] = self.secure.state_dict()
        if self.sampling is not None:
            state["sampling"] = self.sampling.state_dict()
        if self.client_dp is not None:
            state["client_dp"] = self.client_dp.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (of a run with the same settings)."""
        version, internal, gauss = state["python_random"]
        random.setstate((version, tuple(internal), gauss))  # Flower's node sampling
        if self.secure is not None:
            self.secure.load_state_dict(state["secagg"])
        if self.sampling is not None:
            self.sampling.load_state_dict(state["sampling"])
        if self.client_dp is not None:
            self.client_dp.load_state_dict(state["client_dp"])

    def optimizer_state(self) -> dict:
        """The configured strategy's optimizer arrays (FedAdam/FedYogi moments, FedAvgM momentum)."""
        return strategy_state(self.aggregation)

    def load_optimizer_state(self, state: dict) -> None:
        """Put :meth:`optimizer_state`'s output back."""
        restore_strategy_state(self.aggregation, state)


def _random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def compose(cfg: FedRecConfig, grid: Grid) -> Federation:
    """The configured strategy, with secure aggregation and client-level DP when on."""
    aggregation = build_strategy(cfg)
    assert isinstance(aggregation, AdapterAggregation)
    federation = Federation(aggregation, RecordingGrid(grid))
    if cfg.secagg.secure_aggregation:
        require_linear_strategy(aggregation)
        # a client-level DP mean is unweighted: each survivor counts once; the loss is masked too
        weighting = (CLIENT_DP_WEIGHT, 1.0) if cfg.client_dp.client_dp else (NUM_EXAMPLES, cfg.secagg.max_weight)
        masking = masking_parameters(cfg.secagg, *weighting, secure_metrics=(TRAIN_LOSS,))
        federation.secure = SecAggGrid(federation.recording, cfg.secagg, masking, seed=cfg.federation.seed)
    secret = cfg.record_dp.secure_noise  # the server's draws come from the OS, not from the run's seed
    if cfg.federation.client_sampling == "poisson":  # the strategy addresses every node; this keeps some
        entropy = None if secret else (cfg.federation.seed, SAMPLING_STREAM)
        rng = np.random.default_rng(entropy)
        federation.sampling = PoissonSampling(aggregation, cfg.federation.fraction_train, rng)
    if cfg.client_dp.client_dp:
        federation.client_dp = ClientLevelDP(
            federation.sampling or aggregation,
            cfg.client_dp,
            summed_securely=federation.secure is not None,
            seed=None if secret else cfg.federation.seed,
        )
    return federation
