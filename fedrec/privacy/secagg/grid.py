"""Server side of SecAgg+ for Message-API strategies: a ``Grid`` wrapper.

``strategy.start(grid=SecAggGrid(grid, config), ...)`` runs any linear strategy with
secure aggregation and without changing it: when the strategy sends a round's train
messages, the grid runs the four SecAgg+ stages with those nodes (see
:mod:`.mod`), unmasks only the sum of the survivors' weighted
updates, and hands the strategy one reply per survivor that carries the securely
aggregated adapter ``global + mean update`` and the survivor's own metrics (in the
clear). Any weighted average of identical adapters is that adapter, so FedAvg,
FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx and client-side-clipping DP wrappers
aggregate exactly what SecAgg+ produced. Strategies that need individual updates are
refused by :func:`require_linear_strategy`.

A node's masked-input reply carries fresh public keys for the next round, so a node
sampled in consecutive rounds skips ``setup``. The ``unmask`` messages also carry the
next round's neighbourhoods over this round's survivors, and the replies those
neighbourhoods' encrypted shares (while samples repeat: in the first round and after a
round that sampled the same nodes as the one before): when the next round samples
exactly the nodes that shared, it skips ``share-keys`` too and is two exchanges (masked
inputs, unmask); otherwise it runs ``share-keys`` with the advertised keys. Replies are handled as
they arrive (masked inputs checked and summed, secrets reconstructed), while the remaining
nodes are still answering.

Nodes that fail before their masked input are dropped and their pairwise masks are
reconstructed from their neighbours' shares; when too few shares remain, or the sum
is out of range, the round fails with a logged reason and the strategy keeps the
previous global adapter (it receives only error replies).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import ERROR
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedMedian,
    FedTrimmedAvg,
    FedXgbBagging,
    FedXgbCyclic,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)
from flwr.supercore import log

from ...config import SecAggConfig
from ...protocol.exchange import DelegatingGrid
from ...protocol.records import NUM_EXAMPLES
from ...protocol.secagg import MaskingParameters, PublicKeys
from .crypto import SecAggError
from .exchange import StageExchange
from .round import SecureRound, SharedKeys, error_reply, requests_by_node

NEEDS_INDIVIDUAL_UPDATES = (
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Bulyan,
    QFedAvg,
    FedXgbBagging,
    FedXgbCyclic,
    DifferentialPrivacyServerSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
)


def require_linear_strategy(strategy: Strategy) -> None:
    """Refuse strategies that must see individual client updates."""
    if isinstance(strategy, NEEDS_INDIVIDUAL_UPDATES):
        raise ValueError(
            f"{type(strategy).__name__} needs each client's update, which secure aggregation hides; "
            "use a linear strategy (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx, client-side DP "
            "clipping) or set secure-aggregation = false"
        )


def masking_parameters(
    config: SecAggConfig,
    weight_key: str = NUM_EXAMPLES,
    max_weight: float | None = None,
    secure_metrics: tuple[str, ...] = (),
) -> MaskingParameters:
    """The masking of ``config``, weighting each update by the reply metric ``weight_key``
    of at most ``max_weight`` (default ``max-weight``), with ``secure_metrics`` masked
    beside it.
    """
    return MaskingParameters(
        clipping_range=config.clipping_range,
        quantization_range=config.quantization_range,
        modulus_range=config.modulus_range,
        max_weight=config.max_weight if max_weight is None else max_weight,
        weight_key=weight_key,
        secure_metrics=secure_metrics,
    )


class SecAggGrid(DelegatingGrid):
    """Delegates to ``grid``; a round's train messages go through SecAgg+."""

    def __init__(
        self, grid: Grid, config: SecAggConfig, masking: MaskingParameters | None = None, seed: int = 0
    ) -> None:
        super().__init__(grid)
        self.config, self.masking = config, masking or masking_parameters(config)
        self.rng = random.Random(seed)
        self.round = 0
        self.failures: list[tuple[int, str]] = []  # (secure round, reason)
        self.last_dropped: dict[int, str] = {}  # node -> why it left the latest round
        self.last_stage_seconds: dict[str, float] = {}
        self.last_totals: dict[str, float | None] = {}  # the latest round's secure sums and means (SecureRound.totals)
        self.next_keys: dict[int, PublicKeys] = {}  # keys nodes advertised for round ``self.round + 1``
        self.next_shared: SharedKeys | None = None  # shares sent for round ``self.round + 1`` with unmask
        self.last_sample: set[int] | None = None

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Train messages run SecAgg+; anything else is forwarded unchanged."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        self.config.check_sum(len(messages))  # no sum of this many inputs may wrap
        self.round += 1
        order = [m.metadata.dst_node_id for m in messages]
        self.rng.shuffle(order)
        known_keys, shared, self.next_keys, self.next_shared = self.next_keys, self.next_shared, {}, None
        if shared is not None and set(shared.hood) != set(order):
            shared = None  # shared for another sample: share-keys again
        # share for the next round only while samples repeat (full participation)
        share_ahead = self.last_sample is None or self.last_sample == set(order)
        self.last_sample = set(order)
        exchange = StageExchange(self._grid, requests_by_node(messages))
        secure_round = SecureRound(exchange, self.config, self.masking, self.round, order, timeout, known_keys)
        self.last_dropped, self.last_stage_seconds = exchange.dropped, exchange.seconds
        self.last_totals = {}
        try:
            replies = secure_round.run(shared, share_ahead, self.rng)
            self.last_totals = secure_round.totals
            return replies
        except SecAggError as err:
            log(ERROR, "secure aggregation round %d failed: %s", self.round, err)
            self.failures.append((self.round, str(err)))
            return [error_reply(m, f"secure aggregation failed: {err}") for m in messages]
        finally:
            self.next_keys = secure_round.next.keys
            self.next_shared = secure_round.next.shared()

    def state_dict(self) -> dict[str, Any]:
        """The ring-order generator and the round counter (JSON-able); keys and shares are
        not kept: a resumed run starts its first round with ``setup``.
        """
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.round = int(state["round"])
