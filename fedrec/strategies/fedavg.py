"""FedAvg over LoRA adapters, and FFA-LoRA (FedAvg over B with A frozen)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .aggregation import AdapterAggregation


class FedAvgLoRA(AdapterAggregation, FedAvg):
    """Flower's FedAvg over the adapter's tensors, weighted by ``num-examples``.

    Averaging A and B separately is not averaging their products ``B A``: the
    aggregate is inexact whenever clients' A differ.
    """


class FFALoRA(FedAvgLoRA):
    """FFA-LoRA (Sun et al., ICLR 2024): A stays at the shared seeded initialisation
    and only B is trained and sent, so the average of B is the average of the
    products ``B A`` (exact) at half the bytes. Refuses an adapter in which A travels.
    """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Check that only B travels, then configure as FedAvg."""
        trained_a = [name for name in arrays if "lora_A" in name]
        if trained_a:
            raise ValueError(f"FFA-LoRA trains only B, but the adapter sends A ({trained_a[0]}, ...): freeze A")
        return super().configure_train(server_round, arrays, config, grid)
