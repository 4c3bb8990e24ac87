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

A node's masked-input reply carries fresh public keys for the next round, so a node
sampled in consecutive rounds skips ``setup``. The ``unmask`` messages also carry the
next round's neighbourhoods over this round's survivors, and the replies those
neighbourhoods' encrypted shares (while samples repeat: in the first round and after a
round that sampled the same nodes as the one before): when the next round samples
exactly the nodes that shared, it skips ``share-keys`` too and is two exchanges (masked
inputs, unmask); otherwise it runs ``share-keys`` with the advertised keys. Replies are handled as they
arrive (masked inputs checked and summed, secrets reconstructed), while the remaining
nodes are still answering.

Nodes that fail before their masked input are dropped and their pairwise masks are
reconstructed from their neighbours' shares; when too few shares remain, or the sum
is out of range, the round fails with a logged reason and the strategy keeps the
previous global adapter (it receives only error replies).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from logging import ERROR, WARNING
from typing import NamedTuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
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
    NEXT_PREFIX,
    SECAGG_RECORD,
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    WEIGHT_KEY,
    MaskedSum,
    SecAggError,
    SecAggSettings,
    agreed_key,
    dequantize_mean,
    mask_private_key,
    neighbours,
    reconstruct_secret,
    stage_record,
)
from .delegating_grid import DelegatingGrid, replies_as_they_arrive

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


class PublicKeys(NamedTuple):
    """A node's public keys for one round: the channel (shares) and mask key pairs."""

    channel: bytes
    mask: bytes


class SharedKeys(NamedTuple):
    """What one round's ``share-keys`` yields, or the previous round's ``unmask`` did for
    its nodes: each node's neighbourhood, reconstruction threshold, and the encrypted
    shares addressed to it (``node -> (sources, ciphertexts)``).
    """

    hood: dict[int, list[int]]
    threshold: dict[int, int]
    inbox: dict[int, tuple[list[int], list[bytes]]]


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
        self.next_keys: dict[int, PublicKeys] = {}  # keys nodes advertised for round ``self.round + 1``
        self.next_shared: SharedKeys | None = None  # shares sent for round ``self.round + 1`` with unmask
        self.last_sample: set[int] | None = None

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Train messages run SecAgg+; anything else is forwarded unchanged."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        self.settings.check(len(messages))  # no sum of this many inputs may wrap
        self.round += 1
        order = [m.metadata.dst_node_id for m in messages]
        self.rng.shuffle(order)
        known_keys, shared, self.next_keys, self.next_shared = self.next_keys, self.next_shared, {}, None
        if shared is not None and set(shared.hood) != set(order):
            shared = None  # shared for another sample: share-keys again
        # share for the next round only while samples repeat (full participation)
        share_ahead = self.last_sample is None or self.last_sample == set(order)
        self.last_sample = set(order)
        secure_round = _SecureRound(
            self._grid, self.settings, self.round, messages, order, timeout, known_keys, shared, self.rng, share_ahead
        )
        self.last_dropped = secure_round.dropped
        self.last_stage_seconds = secure_round.seconds
        try:
            return secure_round.run()
        except SecAggError as err:
            log(ERROR, "secure aggregation round %d failed: %s", self.round, err)
            self.failures.append((self.round, str(err)))
            return [_error_reply(m, f"secure aggregation failed: {err}") for m in messages]
        finally:
            self.next_keys = secure_round.next_keys
            self.next_shared = secure_round.next_shared()


def _error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(SECAGG_ERROR_CODE, reason), reply_to=msg)


def _neighbourhood(hood: list[int], keys: Mapping[int, PublicKeys], threshold: int) -> dict:
    """What a node needs to share its secrets among ``hood``."""
    return {
        "nodes": hood,
        "channel-pks": [keys[p].channel for p in hood],
        "mask-pks": [keys[p].mask for p in hood],
        "threshold": threshold,
    }


def _deliver(
    inbox: dict[int, tuple[list[int], list[bytes]]], src: int, destinations: Iterable, ciphertexts: Iterable
) -> None:
    """File ``src``'s encrypted shares under their destinations."""
    for dst, ciphertext in zip(destinations, ciphertexts, strict=True):
        sources, texts = inbox.setdefault(int(dst), ([], []))
        sources.append(src)
        texts.append(bytes(ciphertext))


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
        known_keys: dict[int, PublicKeys],
        shared: SharedKeys | None,
        rng: random.Random,
        share_ahead: bool,
    ) -> None:
        self.grid, self.settings, self.round, self.timeout, self.rng = grid, settings, server_round, timeout, rng
        self.requests = {m.metadata.dst_node_id: m for m in messages}
        self.group_id = messages[0].metadata.group_id
        self.hood = neighbours(ring_order, settings.num_shares)
        self.keys = {n: known_keys[n] for n in self.requests if n in known_keys}
        self.shared, self.share_ahead = shared, share_ahead
        self.next_keys: dict[int, PublicKeys] = {}
        self.next_hood: dict[int, list[int]] = {}  # the next round's neighbourhoods sent with unmask
        self.next_threshold: dict[int, int] = {}
        self.next_inbox: dict[int, tuple[list[int], list[bytes]]] = {}
        self.next_sharers: set[int] = set()
        self.dropped: dict[int, str] = {}
        self.seconds: dict[str, float] = {}  # wall time of each stage's exchange, and of unmasking
        self.names = [WEIGHT_KEY, *messages[0].content["arrays"].keys()]
        self.shapes = {WEIGHT_KEY: (1,), **{k: tuple(v.shape) for k, v in messages[0].content["arrays"].items()}}
        self.masked_sum = MaskedSum([self.shapes[k] for k in self.names], settings.modulus_range)
        self.threshold: dict[int, int] = {}
        self.inbox: dict[int, tuple[list[int], list[bytes]]] = {}  # node -> (sources, ciphertexts) of its shares
        self.collected: dict[int, Message] = {}  # replies with a masked input
        self.seed_shares: dict[int, list[bytes]] = {}  # survivor -> shares of its self-mask seed
        self.key_shares: dict[int, list[bytes]] = {}  # dead node -> shares of its mask-key seed
        self.unmasking_error: SecAggError | None = None

    def run(self) -> list[Message]:
        """Run the stages; one reply per requested node (aggregate, decline or error)."""
        if self.shared is None:
            self.shared = self._share_keys()
        hood1, inbox = self.shared.hood, self.shared.inbox
        self.threshold, self.inbox = self.shared.threshold, inbox
        self.collected = self._stage(
            STAGE_COLLECT,
            list(hood1),
            lambda n: {"srcs": inbox[n][0], "ciphertexts": inbox[n][1], **self.settings.masking_values()},
            self.timeout,
            self._add_masked,
            carry_request=True,
        )
        survivors = [n for n in hood1 if n in self.collected]
        dead = {n for n in hood1 if n not in self.collected}
        if not survivors:
            raise SecAggError("no client sent a masked input")
        self.seed_shares = {n: [] for n in survivors}
        self.key_shares = {n: [] for n in dead}
        next_order = [n for n in survivors if n in self.next_keys] if self.share_ahead else []
        self.rng.shuffle(next_order)
        self.next_hood = neighbours(next_order, self.settings.num_shares)
        self.next_threshold = {n: self.settings.threshold_for(len(h)) for n, h in self.next_hood.items()}
        self._stage(
            STAGE_UNMASK,
            survivors,
            lambda n: {
                "active": [p for p in hood1[n] if p in self.collected],
                "dead": [p for p in hood1[n] if p in dead],
                **self._next_neighbourhood(n),
            },
            self.settings.timeout,
            self._take_unmask_shares,
        )
        started = time.perf_counter()
        if self.unmasking_error is not None:
            raise self.unmasking_error
        missing = {**self.seed_shares, **self.key_shares}
        if missing:
            node, shares = next(iter(missing.items()))
            what = "self-mask seed" if node in self.seed_shares else "mask-key seed"
            raise SecAggError(
                f"only {len(shares)} of the {self.threshold[node]} shares needed to reconstruct node {node}'s "
                f"{what} arrived (dropped: {self.dropped})"
            )
        mean = dequantize_mean(self.masked_sum.result(), len(survivors), self.settings)
        current = self.requests[survivors[0]].content["arrays"]
        aggregate = ArrayRecord(
            {
                name: Array((current[name].numpy() + delta).astype(current[name].numpy().dtype))
                for name, delta in zip(self.names[1:], mean, strict=True)
            }
        )
        replies = self._replies(aggregate)
        self.seconds["server-unmasking"] = time.perf_counter() - started
        return replies

    def _share_keys(self) -> SharedKeys:
        """``setup`` for nodes that advertised no keys, then ``share-keys``."""
        fresh = [n for n in self.requests if n not in self.keys]
        if fresh:
            self._stage(STAGE_SETUP, fresh, lambda node: {}, self.settings.timeout, self._take_keys)
        keys = self.keys
        hood1 = {n: [p for p in self.hood[n] if p in keys] for n in keys}
        threshold = {n: self.settings.threshold_for(len(hood1[n])) for n in keys}
        replies = self._stage(
            STAGE_SHARE_KEYS,
            list(keys),
            lambda n: _neighbourhood(hood1[n], keys, threshold[n]),
            self.settings.timeout,
        )
        inbox: dict[int, tuple[list[int], list[bytes]]] = {}
        for src, reply in replies.items():
            record = reply.content.config_records[SECAGG_RECORD]
            _deliver(inbox, src, record.get("dst", []), record.get("ciphertexts", []))
        return SharedKeys(
            {n: hood1[n] for n in replies},
            {n: threshold[n] for n in replies},
            {n: inbox.get(n, ([], [])) for n in replies},
        )

    def _next_neighbourhood(self, node: int) -> dict:
        """The next round's neighbourhood of ``node`` for it to share its next secrets."""
        if node not in self.next_hood:
            return {}
        values = _neighbourhood(self.next_hood[node], self.next_keys, self.next_threshold[node])
        return {NEXT_PREFIX + key: value for key, value in values.items()}

    def next_shared(self) -> SharedKeys | None:
        """The next round's shares sent with unmask, when every node of its graph sent them."""
        if not self.next_hood or set(self.next_hood) != self.next_sharers:
            return None
        inbox = {n: self.next_inbox.get(n, ([], [])) for n in self.next_hood}
        return SharedKeys(self.next_hood, self.next_threshold, inbox)

    def _stage(
        self,
        stage: str,
        nodes: list[int],
        payload: Callable[[int], dict],
        timeout: float | None,
        handle: Callable[[int, ConfigRecord, Message], None] | None = None,
        carry_request: bool = False,
    ) -> dict[int, Message]:
        """Send ``stage`` to ``nodes`` and pass each reply to ``handle`` as it arrives;
        the replies of the nodes that answered correctly.
        """
        messages = []
        for node in nodes:
            request = self.requests[node]
            content = RecordDict(dict(request.content.items())) if carry_request else RecordDict()
            content[SECAGG_RECORD] = stage_record(stage, {"round": self.round, **payload(node)})
            messages.append(self.grid.create_message(content, MessageType.TRAIN, node, self.group_id))
        answered: dict[int, Message] = {}
        started = time.perf_counter()
        for reply in replies_as_they_arrive(self.grid, messages, timeout):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise SecAggError(reply.error.reason)
                record = reply.content.config_records.get(SECAGG_RECORD)
                if record is None:
                    raise SecAggError(f"the reply to {stage} carries no {SECAGG_RECORD!r} record")
                if handle is not None:
                    handle(node, record, reply)
            except (SecAggError, KeyError, ValueError, TypeError) as err:
                self.dropped[node] = f"{stage}: {err}"
                log(WARNING, "secure aggregation: node %d dropped at %s: %s", node, stage, err)
                continue
            answered[node] = reply
        self.seconds[stage] = time.perf_counter() - started
        for node in nodes:
            if node not in answered and node not in self.dropped:
                self.dropped[node] = f"{stage}: no reply within the timeout"
                log(WARNING, "secure aggregation: node %d dropped at %s: no reply", node, stage)
        return answered

    def _take_keys(self, node: int, record: ConfigRecord, reply: Message) -> None:
        self.keys[node] = PublicKeys(bytes(record["channel-pk"]), bytes(record["mask-pk"]))

    def _add_masked(self, node: int, record: ConfigRecord, reply: Message) -> None:
        """Check a masked input against the adapter's tensors and the ring, then add it;
        keep the node's keys for the next round.
        """
        masked = reply.content.array_records.get(MASKED_RECORD)
        if masked is None:
            raise SecAggError("the reply carries no masked input")
        got = {k: tuple(v.shape) for k, v in masked.items()}
        if got != self.shapes:
            wrong = {k: got.get(k) for k in self.shapes.keys() | got.keys() if got.get(k) != self.shapes.get(k)}
            raise SecAggError(
                f"masked input tensors differ from the adapter's: {dict(sorted(wrong.items())[:3])} "
                f"(expected {dict(sorted((k, self.shapes.get(k)) for k in wrong)[:3])})"
            )
        vectors = [masked[name].numpy() for name in self.names]
        for name, values in zip(self.names, vectors, strict=True):
            if values.dtype != np.uint32 or (values.size and int(values.max()) >= self.settings.modulus_range):
                raise SecAggError(f"masked tensor {name!r} is not uint32 in [0, modulus-range)")
        self.masked_sum.add(vectors)
        if NEXT_PREFIX + "channel-pk" in record:
            channel, mask = record[NEXT_PREFIX + "channel-pk"], record[NEXT_PREFIX + "mask-pk"]
            self.next_keys[node] = PublicKeys(bytes(channel), bytes(mask))

    def _take_unmask_shares(self, node: int, record: ConfigRecord, reply: Message) -> None:
        """Keep a survivor's shares and the shares it sent for the next round; unmask what
        has enough shares.
        """
        seed_shares = list(zip(record.get("seed-nodes", []), record.get("seed-shares", []), strict=True))
        key_shares = list(zip(record.get("key-nodes", []), record.get("key-shares", []), strict=True))
        if node in self.next_hood and record.get(NEXT_PREFIX + "shared", False):
            destinations, ciphertexts = record.get(NEXT_PREFIX + "dst", []), record.get(NEXT_PREFIX + "ciphertexts", [])
            _deliver(self.next_inbox, node, destinations, ciphertexts)
            self.next_sharers.add(node)
        for owner, share in seed_shares:
            if int(owner) in self.seed_shares:
                self.seed_shares[int(owner)].append(bytes(share))
        for owner, share in key_shares:
            if int(owner) in self.key_shares:
                self.key_shares[int(owner)].append(bytes(share))
        try:
            self._unmask_ready()
        except SecAggError as err:
            self.unmasking_error = self.unmasking_error or err

    def _unmask_ready(self) -> None:
        """Remove the masks whose secrets have enough shares now."""
        for survivor in [n for n, shares in self.seed_shares.items() if len(shares) >= self.threshold[n]]:
            self.masked_sum.remove_self_mask(
                self._reconstruct(survivor, self.seed_shares.pop(survivor), "self-mask seed")
            )
        for node in [n for n, shares in self.key_shares.items() if len(shares) >= self.threshold[n]]:
            key = mask_private_key(self._reconstruct(node, self.key_shares.pop(node), "mask-key seed"))
            for survivor in self.collected:
                if node in self.inbox[survivor][0]:  # the survivor masked with this node
                    self.masked_sum.remove_pair_mask(survivor, node, agreed_key(key, self.keys[survivor].mask))

    def _reconstruct(self, node: int, shares: list[bytes], what: str) -> bytes:
        try:
            return reconstruct_secret(shares[: self.threshold[node]])
        except ValueError as err:
            raise SecAggError(f"node {node}'s {what} cannot be reconstructed: {err}") from None

    def _replies(self, aggregate: ArrayRecord) -> list[Message]:
        replies = []
        for node, request in self.requests.items():
            reply = self.collected.get(node)
            if reply is None:
                replies.append(_error_reply(request, f"dropped from secure aggregation at {self.dropped[node]}"))
                continue
            content = RecordDict({name: record for name, record in reply.content.items() if name != MASKED_RECORD})
            del content[SECAGG_RECORD]
            if "decline" not in content.config_records:
                content["arrays"] = aggregate
            replies.append(Message(content, reply_to=request))
        return replies
