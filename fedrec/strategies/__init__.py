"""LoRA-aware federated strategies on Flower's Message API."""

from .aggregation import AdapterAggregation
from .factory import build_strategy
from .fedavg import FedAvgLoRA, FFALoRA
from .fedprox import FedProxLoRA
from .server_optimizers import FedAdamLoRA, FedAvgMLoRA, FedYogiLoRA

__all__ = [
    "AdapterAggregation",
    "FFALoRA",
    "FedAdamLoRA",
    "FedAvgLoRA",
    "FedAvgMLoRA",
    "FedProxLoRA",
    "FedYogiLoRA",
    "build_strategy",
]
