"""Server optimizers over the adapter (Reddi et al., 2021; Hsu et al., 2019): Flower's
FedAdam, FedYogi and FedAvgM, with fedrec's declines and rank completion.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

from .aggregation import AdapterAggregation


class FedAdamLoRA(AdapterAggregation, FedAdam):
    """FedAdam: the averaged update is the pseudo-gradient of a server Adam step."""


class FedYogiLoRA(AdapterAggregation, FedYogi):
    """FedYogi: FedAdam with Yogi's additive second-moment update."""


class FedAvgMLoRA(AdapterAggregation, FedAvgM):
    """FedAvgM: server momentum on the averaged update."""
