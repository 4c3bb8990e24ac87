"""One round of SecAgg+ on the server, and what it prepares for the next round.

A round runs ``setup`` (nodes that advertised no keys) and ``share-keys`` unless the
previous round's ``unmask`` already carried this sample's shares, then
``collect-masked`` (the train request with each node's shares) and ``unmask``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from ...config import SecAggConfig
from ...protocol.records import ARRAYS, DECLINE, DECLINED, METRICS, NUM_EXAMPLES
from ...protocol.replies import decline_reason
from ...protocol.secagg import (
    MASKED_RECORD,
    SECAGG_RECORD,
    SECURE_METRICS_KEY,
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    WEIGHT_KEY,
    CollectReply,
    CollectRequest,
    EncryptedShares,
    MaskingParameters,
    Neighbourhood,
    PublicKeys,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from .crypto import SecAggError, neighbours
from .exchange import StageExchange
from .unmasking import Inbox, Unmasker

SECAGG_ERROR_CODE = 0  # Flower's ``ErrorCode.UNKNOWN``


class SharedKeys(NamedTuple):
    """What one round's ``share-keys`` yields, or the previous round's ``unmask`` did for
    its nodes: each node's neighbourhood, reconstruction threshold, and the encrypted
    shares addressed to it.
    """

    hood: dict[int, list[int]]
    threshold: dict[int, int]
    inbox: Inbox


def error_reply(msg: Message, reason: str) -> Message:
    """A Flower error reply to ``msg``."""
    return Message(Error(SECAGG_ERROR_CODE, reason), reply_to=msg)


def neighbourhood(hood: list[int], keys: Mapping[int, PublicKeys], threshold: int) -> Neighbourhood:
    """What a node needs to share its secrets among ``hood``."""
    return Neighbourhood(hood, [keys[p].channel for p in hood], [keys[p].mask for p in hood], threshold)


def deliver(inbox: Inbox, src: int, shares: EncryptedShares) -> None:
    """File ``src``'s encrypted shares under their destinations."""
    for dst, ciphertext in zip(shares.dst, shares.ciphertexts, strict=True):
        sources, texts = inbox.setdefault(dst, ([], []))
        sources.append(src)
        texts.append(ciphertext)


@dataclass
class NextRound:
    """What a round prepares for the next: the keys survivors advertise with their masked
    input and, while samples repeat, the next neighbourhoods' shares sent with unmask.
    """

    keys: dict[int, PublicKeys] = field(default_factory=dict)
    hood: dict[int, list[int]] = field(default_factory=dict)
    threshold: dict[int, int] = field(default_factory=dict)
    inbox: Inbox = field(default_factory=dict)
    sharers: set[int] = field(default_factory=set)

    def plan(self, survivors: list[int], share_ahead: bool, rng: random.Random, config: SecAggConfig) -> None:
        """The next round's ring over the survivors that advertised keys (when sharing ahead)."""
        order = [n for n in survivors if n in self.keys] if share_ahead else []
        rng.shuffle(order)
        self.hood = neighbours(order, config.num_shares)
        self.threshold = {n: config.threshold_for(len(h)) for n, h in self.hood.items()}

    def request(self, node: int) -> Neighbourhood | None:
        """The next round's neighbourhood of ``node``, for it to share its next secrets."""
        return neighbourhood(self.hood[node], self.keys, self.threshold[node]) if node in self.hood else None

    def take(self, node: int, shares: EncryptedShares | None) -> None:
        """Keep the next-round shares ``node`` sent with its unmask reply."""
        if node in self.hood and shares is not None:
            deliver(self.inbox, node, shares)
            self.sharers.add(node)

    def shared(self) -> SharedKeys | None:
        """The next round's shares, when every node of its graph sent them."""
        if not self.hood or set(self.hood) != self.sharers:
            return None
        return SharedKeys(self.hood, self.threshold, {n: self.inbox.get(n, ([], [])) for n in self.hood})


class SecureRound:
    """One round of SecAgg+ over the nodes of ``messages`` (train requests)."""

    def __init__(
        self,
        grid_exchange: StageExchange,
        config: SecAggConfig,
        masking: MaskingParameters,
        server_round: int,
        ring_order: list[int],
        timeout: float | None,
        known_keys: dict[int, PublicKeys],
    ) -> None:
        self.exchange, self.config, self.masking = grid_exchange, config, masking
        self.round, self.timeout = server_round, timeout
        self.requests = grid_exchange.requests
        self.hood = neighbours(ring_order, config.num_shares)
        self.keys = {n: known_keys[n] for n in self.requests if n in known_keys}
        self.next = NextRound()
        first = next(iter(self.requests.values())).content[ARRAYS]
        self.shapes = {WEIGHT_KEY: (1,), **{k: tuple(v.shape) for k, v in first.items()}}
        if masking.secure_metrics:
            self.shapes[SECURE_METRICS_KEY] = (len(masking.secure_metrics),)
        self.totals: dict[str, float | None] = {}  # what the server learns of the survivors' metrics: sums, means
        self.summed_weight = 0.0

    def run(self, shared: SharedKeys | None, share_ahead: bool, rng: random.Random) -> list[Message]:
        """Run the stages; one reply per requested node (aggregate, decline or error)."""
        shared = shared or self._share_keys()
        unmasker = Unmasker(self.shapes, self.masking, self.keys, shared.inbox, shared.threshold)
        collected = self._collect(shared, unmasker)
        survivors = [n for n in shared.hood if n in collected]
        dead = {n for n in shared.hood if n not in collected}
        if not survivors:
            raise SecAggError("no client sent a masked input")
        unmasker.expect(survivors, dead)
        self.next.plan(survivors, share_ahead, rng, self.config)

        def unmask_request(n: int) -> ConfigRecord:
            active = [p for p in shared.hood[n] if p in collected]
            dead_peers = [p for p in shared.hood[n] if p in dead]
            return UnmaskRequest(self.round, active, dead_peers, self.next.request(n)).to_record()

        def take_shares(node: int, record: ConfigRecord, reply: Message) -> None:
            shares = UnmaskReply.from_record(record)
            self.next.take(node, shares.next_shares)
            unmasker.take(shares)

        self.exchange.run(STAGE_UNMASK, survivors, unmask_request, self.config.secagg_timeout, take_shares)
        started = time.perf_counter()
        try:
            mean = unmasker.mean_update(len(survivors), self.exchange.dropped)
        except SecAggError as err:
            raise SecAggError(_with_decline_reasons(str(err), collected)) from None
        names = [name for name in self.shapes if name not in (WEIGHT_KEY, SECURE_METRICS_KEY)]
        current = self.requests[survivors[0]].content[ARRAYS]
        aggregate = ArrayRecord(
            {
                name: Array((current[name].numpy() + delta).astype(current[name].numpy().dtype))
                for name, delta in zip(names, mean[: len(names)], strict=True)
            }
        )
        trained = [n for n in survivors if not collected[n].content.metric_records[METRICS].get(DECLINED, 0)]
        self._totals(unmasker.summed_weight, mean[len(names) :], len(trained))
        replies = self._replies(collected, aggregate)
        self.exchange.seconds["server-unmasking"] = time.perf_counter() - started
        return replies

    def _share_keys(self) -> SharedKeys:
        """``setup`` for nodes that advertised no keys, then ``share-keys``."""
        fresh = [n for n in self.requests if n not in self.keys]
        if fresh:

            def take_keys(node: int, record: ConfigRecord, reply: Message) -> None:
                self.keys[node] = SetupReply.from_record(record).keys

            setup = SetupRequest(self.round).to_record
            self.exchange.run(STAGE_SETUP, fresh, lambda _: setup(), self.config.secagg_timeout, take_keys)
        keys = self.keys
        hood = {n: [p for p in self.hood[n] if p in keys] for n in keys}
        threshold = {n: self.config.threshold_for(len(hood[n])) for n in keys}
        replies = self.exchange.run(
            STAGE_SHARE_KEYS,
            list(keys),
            lambda n: ShareKeysRequest(self.round, neighbourhood(hood[n], keys, threshold[n])).to_record(),
            self.config.secagg_timeout,
        )
        inbox: Inbox = {}
        for src, reply in replies.items():
            deliver(inbox, src, ShareKeysReply.from_record(reply.content.config_records[SECAGG_RECORD]).shares)
        return SharedKeys(
            {n: hood[n] for n in replies},
            {n: threshold[n] for n in replies},
            {n: inbox.get(n, ([], [])) for n in replies},
        )

    def _collect(self, shared: SharedKeys, unmasker: Unmasker) -> dict[int, Message]:
        """The train requests with each node's shares; masked inputs summed as they arrive."""

        def collect_request(n: int) -> ConfigRecord:
            return CollectRequest(self.round, shared.inbox[n][0], shared.inbox[n][1], self.masking).to_record()

        def add_masked(node: int, record: ConfigRecord, reply: Message) -> None:
            advertised = CollectReply.from_record(record)
            unmasker.add(node, reply.content.array_records.get(MASKED_RECORD))
            if advertised is not None:
                self.next.keys[node] = advertised.next_keys

        return self.exchange.run(
            STAGE_COLLECT, list(shared.hood), collect_request, self.timeout, add_masked, carry_request=True
        )

    def _totals(self, summed: float, secure: list[np.ndarray], trained: int) -> None:
        """What the unmasked sum says of the survivors that trained: the summed weight (the
        example count when clients weigh by it) and the secure metrics' weighted means.
        """
        masking, self.summed_weight = self.masking, summed
        examples = round(summed * masking.max_weight) if masking.weight_key == NUM_EXAMPLES else None
        means = dict(zip(masking.secure_metrics, secure[0].tolist(), strict=True)) if secure else {}
        self.totals = {"train_examples": examples, "trained": trained, **means}

    def _replies(self, collected: dict[int, Message], aggregate: ArrayRecord) -> list[Message]:
        """One reply per requested node for the strategy: an error for a dropped node; else
        the aggregate and, in place of the metrics that stayed on the node, the survivors'
        mean weight and secure metrics (each survivor's reply carries the same).
        """
        trained = int(self.totals["trained"] or 0)
        mean_weight = self.masking.max_weight * self.summed_weight / trained if trained else 0.0
        secure = {k: float(v) for k, v in self.totals.items() if k in self.masking.secure_metrics and v is not None}
        replies = []
        for node, request in self.requests.items():
            reply = collected.get(node)
            if reply is None:
                replies.append(
                    error_reply(request, f"dropped from secure aggregation at {self.exchange.dropped[node]}")
                )
                continue
            content = RecordDict({name: record for name, record in reply.content.items() if name != MASKED_RECORD})
            del content[SECAGG_RECORD]
            metrics = dict(content.metric_records[METRICS])
            # a strategy weighting by num-examples (under client-level DP the masking weighs by
            # client-dp-weight) still checks it: every reply carries the same aggregate, so any
            # positive weight gives it, and 1 stands in for the count that stayed on the node
            weights = {NUM_EXAMPLES: 1.0, self.masking.weight_key: mean_weight}
            if DECLINE not in content.config_records:
                content[ARRAYS] = aggregate
                metrics |= {**weights, **secure}
            else:
                metrics |= dict.fromkeys(weights, 0)
            content[METRICS] = MetricRecord(metrics)
            replies.append(Message(content, reply_to=request))
        return replies


def requests_by_node(messages: Iterable[Message]) -> dict[int, Message]:
    """The train requests of a round by destination node."""
    return {m.metadata.dst_node_id: m for m in messages}


def _with_decline_reasons(error: str, collected: Mapping[int, Message]) -> str:
    """``error`` followed by the reasons of the nodes that declined: they explain a sum of weight 0."""
    reasons = sorted({decline_reason(m) for m in collected.values() if DECLINE in m.content.config_records})
    return f"{error}; declined: {' | '.join(reasons)}" if reasons else error
