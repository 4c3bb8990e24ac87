"""LoRA-aware federated strategies on Flower's Message API."""

from .fedavg import FedAvgLoRA

__all__ = ["FedAvgLoRA"]
