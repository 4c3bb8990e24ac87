"""FedProx (Li et al., 2020) over the adapter."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from .aggregation import AdapterAggregation


class FedProxLoRA(AdapterAggregation, FedProx):
    """FedAvg that sends ``proximal-mu``; each client pulls its adapter towards the
    global one by ``mu`` (see :class:`fedrec.tasks.training.LocalTraining`).
    """
