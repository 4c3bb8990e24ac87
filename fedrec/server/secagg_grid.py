"""Server side of SecAgg+ for Message-API strategies: a ``Grid`` wrapper.

``strategy.start(grid=SecAggGrid(grid, settings), ...)`` runs any linear strategy with
secure aggregation and without changing it: when the strategy sends a round's train
messages, the grid runs the four SecAgg+ stages with those nodes (see
:mod:`fedrec.privacy.secagg_mod`), unmasks only the sum of the survivors' weighted
updates, and hands the strategy one reply per survivor that carries the securely
aggregated adapter ``global + mean update`` and the survivor's own metrics (in the
clear). Any weighted average of identical adapters is that adapter, so FedAvg,
FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx and client-side-clipping DP wrappers
aggregate exactly what SecAgg+ produced. Strategies that need individual updates are
refused by :func:`require_linear_strategy`.

Nodes that fail before their masked input are dropped and their pairwise masks are
reconstructed from their neighbours' shares; when too few shares remain, or the sum
is out of range, the round fails with a logged reason and the strategy keeps the
previous global adapter (it receives only error replies).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from logging import ERROR, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, RecordDict
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

from ..privacy.secagg import (
    MASKED_RECORD,
    SECAGG_RECORD,
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    WEIGHT_KEY,
    SecAggError,
    SecAggSettings,
    agreed_key,
    dequantize_mean,
    neighbours,
    reconstruct_secret,
    stage_record,
    unmask_sum,
)
from .delegating_grid import DelegatingGrid

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
SECAGG_ERROR_CODE = 0  # Flower's ``ErrorCode.UNKNOWN``


def require_linear_strategy(strategy: Strategy) -> None:
    """Refuse strategies that must see individual client updates."""
    if isinstance(strategy, NEEDS_INDIVIDUAL_UPDATES):
        raise ValueError(
            f"{type(strategy).__name__} needs each client's update, which secure aggregation hides; "
            "use a linear strategy (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx, client-side DP "
            "clipping) or set secure-aggregation = false"
        )


class SecAggGrid(DelegatingGrid):
    """Delegates to ``grid``; a round's train messages go through SecAgg+."""

    def __init__(self, grid: Grid, settings: SecAggSettings, seed: int = 0) -> None:
        super().__init__(grid)
        self.settings = settings
        self.rng = random.Random(seed)
        self.round = 0
        self.failures: list[tuple[int, str]] = []  # (secure round, reason)
        self.last_dropped: dict[int, str] = {}  # node -> why it left the latest round
        self.last_stage_seconds: dict[str, float] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Train messages run SecAgg+; anything else is forwarded unchanged."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        self.settings.check(len(messages))  # no sum of this many inputs may wrap
        self.round += 1
        order = [m.metadata.dst_node_id for m in messages]
        self.rng.shuffle(order)
        secure_round = _SecureRound(self._grid, self.settings, self.round, messages, order, timeout)
        self.last_dropped = secure_round.dropped
        self.last_stage_seconds = secure_round.seconds
        try:
            return secure_round.run()
        except SecAggError as err:
            log(ERROR, "secure aggregation round %d failed: %s", self.round, err)
            self.failures.append((self.round, str(err)))
            return [_error_reply(m, f"secure aggregation failed: {err}") for m in messages]


def _error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(SECAGG_ERROR_CODE, reason), reply_to=msg)


class _SecureRound:
    """One round of SecAgg+ over the nodes of ``messages``."""

    def __init__(
        self,
        grid: Grid,
        settings: SecAggSettings,
        server_round: int,
        messages: list[Message],
        ring_order: list[int],
        timeout: float | None,
    ) -> None:
        self.grid, self.settings, self.round, self.timeout = grid, settings, server_round, timeout
        self.requests = {m.metadata.dst_node_id: m for m in messages}
        self.group_id = messages[0].metadata.group_id
        self.hood = neighbours(ring_order, settings.num_shares)
        self.dropped: dict[int, str] = {}
        self.seconds: dict[str, float] = {}  # wall time of each stage's exchange, and of unmasking
        self.masked: dict[int, list[np.ndarray]] = {}  # checked masked inputs, weight first
        self.threshold: dict[int, int] = {}
        self.mask_pk: dict[int, bytes] = {}
        self.inbox: dict[int, tuple[list[int], list[bytes]]] = {}

    def run(self) -> list[Message]:
        """Run the stages; one reply per requested node (aggregate, decline or error)."""
        keys = self._stage(STAGE_SETUP, list(self.requests), lambda node: {}, self.settings.timeout)
        channel_pk = {n: bytes(r.content.config_records[SECAGG_RECORD]["channel-pk"]) for n, r in keys.items()}
        self.mask_pk = mask_pk = {n: bytes(r.content.config_records[SECAGG_RECORD]["mask-pk"]) for n, r in keys.items()}
        hood1 = {n: [p for p in self.hood[n] if p in keys] for n in keys}
        self.threshold = {n: self.settings.threshold_for(len(hood1[n])) for n in keys}
        shared = self._stage(
            STAGE_SHARE_KEYS,
            list(keys),
            lambda n: {
                "nodes": hood1[n],
                "channel-pks": [channel_pk[p] for p in hood1[n]],
                "mask-pks": [mask_pk[p] for p in hood1[n]],
                "threshold": self.threshold[n],
            },
            self.settings.timeout,
        )
        self.inbox = inbox = {n: ([], []) for n in shared}
        for src, reply in shared.items():
            record = reply.content.config_records[SECAGG_RECORD]
            for dst, ciphertext in zip(record.get("dst", []), record.get("ciphertexts", []), strict=True):
                if int(dst) in inbox:
                    inbox[int(dst)][0].append(src)
                    inbox[int(dst)][1].append(bytes(ciphertext))
        collected = self._stage(
            STAGE_COLLECT,
            list(shared),
            lambda n: {
                "srcs": inbox[n][0],
                "ciphertexts": inbox[n][1],
                **self.settings.masking_values(),
            },
            self.timeout,
            carry_request=True,
            check=self._check_masked,
        )
        survivors = [n for n in shared if n in collected]
        dead = [n for n in shared if n not in collected]
        if not survivors:
            raise SecAggError("no client sent a masked input")
        answers = self._stage(
            STAGE_UNMASK,
            survivors,
            lambda n: {"active": [p for p in hood1[n] if p in collected], "dead": [p for p in hood1[n] if p in dead]},
            self.settings.timeout,
        )
        started = time.perf_counter()
        aggregate = self._aggregate(collected, dead, answers)
        replies = self._replies(collected, aggregate)
        self.seconds["server-unmasking"] = time.perf_counter() - started
        return replies

    def _stage(
        self,
        stage: str,
        nodes: list[int],
        payload: Callable[[int], dict],
        timeout: float | None,
        carry_request: bool = False,
        check: Callable[[Message], None] | None = None,
    ) -> dict[int, Message]:
        """Send ``stage`` to ``nodes``; the replies of those that answered correctly."""
        messages = []
        for node in nodes:
            request = self.requests[node]
            content = RecordDict(dict(request.content.items())) if carry_request else RecordDict()
            content[SECAGG_RECORD] = stage_record(stage, {"round": self.round, **payload(node)})
            messages.append(self.grid.create_message(content, MessageType.TRAIN, node, self.group_id))
        answered: dict[int, Message] = {}
        started = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.seconds[stage] = time.perf_counter() - started
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise SecAggError(reply.error.reason)
                if check is not None:
                    check(reply)
                elif SECAGG_RECORD not in reply.content.config_records:
                    raise SecAggError(f"the reply to {stage} carries no {SECAGG_RECORD!r} record")
            except (SecAggError, KeyError, ValueError, TypeError) as err:
                self.dropped[node] = f"{stage}: {err}"
                log(WARNING, "secure aggregation: node %d dropped at %s: %s", node, stage, err)
                continue
            answered[node] = reply
        for node in nodes:
            if node not in answered and node not in self.dropped:
                self.dropped[node] = f"{stage}: no reply within the timeout"
                log(WARNING, "secure aggregation: node %d dropped at %s: no reply", node, stage)
        return answered

    def _check_masked(self, reply: Message) -> None:
        """A masked input must match the global adapter's tensors and lie in the ring."""
        request = self.requests[reply.metadata.src_node_id]
        masked = reply.content.array_records.get(MASKED_RECORD)
        if masked is None:
            raise SecAggError("the reply carries no masked input")
        expected = {WEIGHT_KEY: (1,), **{k: tuple(v.shape) for k, v in request.content["arrays"].items()}}
        got = {k: tuple(v.shape) for k, v in masked.items()}
        if got != expected:
            wrong = {k: got.get(k) for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)}
            raise SecAggError(
                f"masked input tensors differ from the adapter's: {dict(sorted(wrong.items())[:3])} "
                f"(expected {dict(sorted((k, expected.get(k)) for k in wrong)[:3])})"
            )
        vectors = [masked[name].numpy() for name in expected]
        for name, values in zip(expected, vectors, strict=True):
            if values.dtype != np.uint32 or (values.size and int(values.max()) >= self.settings.modulus_range):
                raise SecAggError(f"masked tensor {name!r} is not uint32 in [0, modulus-range)")
        self.masked[reply.metadata.src_node_id] = vectors

    def _aggregate(self, collected: dict[int, Message], dead: list[int], answers: dict[int, Message]) -> ArrayRecord:
        """Reconstruct the survivors' self-mask seeds and the dropped nodes' mask keys,
        unmask the sum and return ``global + mean update``.
        """
        seed_shares: dict[int, list[bytes]] = {n: [] for n in collected}
        key_shares: dict[int, list[bytes]] = {n: [] for n in dead}
        for reply in answers.values():
            record = reply.content.config_records[SECAGG_RECORD]
            for node, share in zip(record.get("seed-nodes", []), record.get("seed-shares", []), strict=True):
                if int(node) in seed_shares:
                    seed_shares[int(node)].append(bytes(share))
            for node, share in zip(record.get("key-nodes", []), record.get("key-shares", []), strict=True):
                if int(node) in key_shares:
                    key_shares[int(node)].append(bytes(share))
        seeds = {n: self._reconstruct(n, shares, "self-mask seed") for n, shares in seed_shares.items()}
        pair_seeds = {}
        for node, shares in key_shares.items():
            key = self._reconstruct(node, shares, "mask key")
            for survivor in collected:
                if node in self.inbox[survivor][0]:  # the survivor masked with this node
                    pair_seeds[(survivor, node)] = agreed_key(key, self.mask_pk[survivor])
        names = [WEIGHT_KEY, *self.requests[next(iter(collected))].content["arrays"].keys()]
        masked = {node: self.masked[node] for node in collected}
        total = unmask_sum(masked, seeds, pair_seeds, self.settings.modulus_range)
        mean = dequantize_mean(total, len(collected), self.settings)
        current = self.requests[next(iter(collected))].content["arrays"]
        return ArrayRecord(
            {
                name: Array((current[name].numpy() + delta).astype(current[name].numpy().dtype))
                for name, delta in zip(names[1:], mean, strict=True)
            }
        )

    def _reconstruct(self, node: int, shares: list[bytes], what: str) -> bytes:
        needed = self.threshold[node]
        if len(shares) < needed:
            raise SecAggError(
                f"only {len(shares)} of the {needed} shares needed to reconstruct node {node}'s {what} arrived "
                f"(dropped: {self.dropped})"
            )
        try:
            return reconstruct_secret(shares[:needed])
        except ValueError as err:
            raise SecAggError(f"node {node}'s {what} cannot be reconstructed: {err}") from None

    def _replies(self, collected: dict[int, Message], aggregate: ArrayRecord) -> list[Message]:
        replies = []
        for node, request in self.requests.items():
            reply = collected.get(node)
            if reply is None:
                replies.append(_error_reply(request, f"dropped from secure aggregation at {self.dropped[node]}"))
                continue
            content = RecordDict({name: record for name, record in reply.content.items() if name != MASKED_RECORD})
            del content[SECAGG_RECORD]
            if "decline" not in content.config_records:
                content["arrays"] = aggregate
            replies.append(Message(content, reply_to=request))
        return replies
