"""The SecAgg+ stages as typed records, shared by the client mod and the server grid.

Each stage travels as one ``ConfigRecord`` named :data:`SECAGG_RECORD` in a train
message: ``stage`` and ``round`` first, then the stage's values. Every request and
reply has ``to_record`` / ``from_record``; empty lists are left out of a record
(Flower cannot size them) and read back as empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from flwr.app import ConfigRecord, RecordDict

from .records import (
    CLIENT_DP_WEIGHT,
    DECLINED,
    DELTA,
    EPSILON,
    LEDGER,
    LORA_RANK,
    NOISE_MULTIPLIER,
    SAMPLE_RATE,
    SECAGG_CLIPPED,
)

SECAGG_RECORD = "secagg"  # name of the ConfigRecord that carries a protocol stage
MASKED_RECORD = "masked"  # name of the ArrayRecord that carries a masked vector
WEIGHT_KEY = "__weight__"  # first entry of a masked vector: the quantized weight
SECURE_METRICS_KEY = "__metrics__"  # last entry of a masked vector: the reply metrics summed securely
# Under SecAgg+ a reply's metrics travel in the clear only if named here (an allowlist:
# a new metric stays hidden until it is added): whether the client declined, its
# record-level privacy (needed to enforce and audit budgets; the sample rate and the
# ledger tell its example count to within the batch size), its LoRA rank (a setting),
# the constant weight of a client-level DP mean, and how many of its update values it
# clipped to clipping-range. Example counts, losses, update norms, steps and times do
# not leave the node in the clear: the weight and the secure metrics are masked.
CLEAR_METRICS = frozenset(
    {DECLINED, EPSILON, DELTA, NOISE_MULTIPLIER, SAMPLE_RATE, LEDGER, LORA_RANK, CLIENT_DP_WEIGHT, SECAGG_CLIPPED}
)
NEXT_PREFIX = "next-"  # values about the next round (its keys, neighbourhood, shares)

STAGE_SETUP = "setup"
STAGE_SHARE_KEYS = "share-keys"
STAGE_COLLECT = "collect-masked"
STAGE_UNMASK = "unmask"


class ProtocolError(ValueError):
    """A SecAgg+ record is malformed."""


def stage_record(stage: str, values: Mapping[str, object]) -> ConfigRecord:
    """A stage's record; empty lists are left out."""
    return ConfigRecord({"stage": stage, **{k: v for k, v in values.items() if not (isinstance(v, list) and not v)}})


def stage_of(content: RecordDict) -> str | None:
    """The SecAgg+ stage a message belongs to, or None."""
    record = content.config_records.get(SECAGG_RECORD)
    return None if record is None else str(record["stage"])


def _ints(record: ConfigRecord, key: str) -> list[int]:
    return [int(v) for v in record.get(key, [])]


def _bytes(record: ConfigRecord, key: str) -> list[bytes]:
    return [bytes(v) for v in record.get(key, [])]


def _prefixed(values: Mapping[str, object], prefix: str) -> dict[str, object]:
    return {prefix + k: v for k, v in values.items()}


def _unprefixed(record: ConfigRecord, prefix: str) -> ConfigRecord:
    return ConfigRecord({k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)})


class PublicKeys(NamedTuple):
    """A node's public keys for one round: the channel (shares) and mask key pairs."""

    channel: bytes
    mask: bytes

    def values(self) -> dict[str, bytes]:
        """The keys by record name."""
        return {"channel-pk": self.channel, "mask-pk": self.mask}

    @classmethod
    def from_values(cls, record: ConfigRecord) -> PublicKeys:
        """Inverse of :meth:`values`."""
        return cls(bytes(record["channel-pk"]), bytes(record["mask-pk"]))


@dataclass(frozen=True)
class MaskingParameters:
    """What a client needs to quantize and mask its update (sent with the collect stage)."""

    clipping_range: float
    quantization_range: int
    modulus_range: int
    max_weight: float
    weight_key: str  # the reply metric that weights a client's update
    secure_metrics: tuple[str, ...] = ()  # reply metrics masked with the update: the server learns their weighted mean

    def values(self) -> dict[str, float | int | str]:
        """The parameters by record name (no ``secure-metrics`` when there are none: Flower
        cannot size an empty string).
        """
        values: dict[str, float | int | str] = {
            "clipping-range": self.clipping_range,
            "quantization-range": self.quantization_range,
            "modulus-range": self.modulus_range,
            "max-weight": self.max_weight,
            "weight-key": self.weight_key,
        }
        return values | ({"secure-metrics": ",".join(self.secure_metrics)} if self.secure_metrics else {})

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> MaskingParameters:
        """Inverse of :meth:`values`."""
        return cls(
            clipping_range=float(values["clipping-range"]),  # type: ignore[arg-type]
            quantization_range=int(values["quantization-range"]),  # type: ignore[call-overload]
            modulus_range=int(values["modulus-range"]),  # type: ignore[call-overload]
            max_weight=float(values["max-weight"]),  # type: ignore[arg-type]
            weight_key=str(values["weight-key"]),
            secure_metrics=tuple(name for name in str(values.get("secure-metrics", "")).split(",") if name),
        )


@dataclass(frozen=True)
class Neighbourhood:
    """The nodes a node shares its secrets among, their public keys, and the threshold."""

    nodes: list[int]
    channel_pks: list[bytes]
    mask_pks: list[bytes]
    threshold: int

    def values(self) -> dict[str, object]:
        """The neighbourhood by record name."""
        return {
            "nodes": self.nodes,
            "channel-pks": self.channel_pks,
            "mask-pks": self.mask_pks,
            "threshold": self.threshold,
        }

    @classmethod
    def from_values(cls, record: ConfigRecord) -> Neighbourhood:
        """Inverse of :meth:`values`; refuses lists of different lengths or repeated nodes."""
        hood = cls(
            _ints(record, "nodes"), _bytes(record, "channel-pks"), _bytes(record, "mask-pks"), int(record["threshold"])
        )
        if len(set(hood.nodes)) != len(hood.nodes) or not len(hood.nodes) == len(hood.channel_pks) == len(
            hood.mask_pks
        ):
            raise ProtocolError(f"malformed neighbourhood {hood.nodes}")
        return hood


@dataclass(frozen=True)
class EncryptedShares:
    """A node's Shamir shares, each encrypted for its destination node."""

    dst: list[int] = field(default_factory=list)
    ciphertexts: list[bytes] = field(default_factory=list)

    def values(self) -> dict[str, list]:
        """The shares by record name."""
        return {"dst": self.dst, "ciphertexts": self.ciphertexts}

    @classmethod
    def from_values(cls, record: ConfigRecord) -> EncryptedShares:
        """Inverse of :meth:`values`."""
        shares = cls(_ints(record, "dst"), _bytes(record, "ciphertexts"))
        if len(shares.dst) != len(shares.ciphertexts):
            raise ProtocolError(f"{len(shares.dst)} destinations for {len(shares.ciphertexts)} ciphertexts")
        return shares


@dataclass(frozen=True)
class SetupReply:
    """``setup``: the node's fresh public keys."""

    keys: PublicKeys

    def to_record(self) -> ConfigRecord:  # noqa: D102
        return stage_record(STAGE_SETUP, self.keys.values())

    @classmethod
    def from_record(cls, record: ConfigRecord) -> SetupReply:  # noqa: D102
        return cls(PublicKeys.from_values(record))


@dataclass(frozen=True)
class CollectRequest:
    """``collect-masked``: the shares addressed to the node (sources and ciphertexts)
    and the masking parameters; the message also carries the train request.
    """

    round: int
    srcs: list[int]
    ciphertexts: list[bytes]
    masking: MaskingParameters

    def to_record(self) -> ConfigRecord:  # noqa: D102
        values = {"round": self.round, "srcs": self.srcs, "ciphertexts": self.ciphertexts, **self.masking.values()}
        return stage_record(STAGE_COLLECT, values)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> CollectRequest:  # noqa: D102
        request = cls(
            int(record["round"]),
            _ints(record, "srcs"),
            _bytes(record, "ciphertexts"),
            MaskingParameters.from_values(record),
        )
        if len(request.srcs) != len(request.ciphertexts):
            raise ProtocolError(f"{len(request.srcs)} sources for {len(request.ciphertexts)} ciphertexts")
        return request


@dataclass(frozen=True)
class CollectReply:
    """``collect-masked``: beside the masked input, the node's keys for the next round."""

    next_keys: PublicKeys

    def to_record(self) -> ConfigRecord:  # noqa: D102
        return stage_record(STAGE_COLLECT, _prefixed(self.next_keys.values(), NEXT_PREFIX))

    @classmethod
    def from_record(cls, record: ConfigRecord) -> CollectReply | None:
        """The reply's next-round keys, or None when it advertises none."""
        if NEXT_PREFIX + "channel-pk" not in record:
            return None
        return cls(PublicKeys.from_values(_unprefixed(record, NEXT_PREFIX)))


@dataclass(frozen=True)
class UnmaskRequest:
    """``unmask``: which of the node's neighbours survived and which dropped, and the
    next round's neighbourhood when the server expects the same nodes again.
    """

    round: int
    active: list[int]
    dead: list[int]
    next_hood: Neighbourhood | None = None

    def to_record(self) -> ConfigRecord:  # noqa: D102
        values: dict[str, object] = {"round": self.round, "active": self.active, "dead": self.dead}
        if self.next_hood is not None:
            values |= _prefixed(self.next_hood.values(), NEXT_PREFIX)
        return stage_record(STAGE_UNMASK, values)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> UnmaskRequest:  # noqa: D102
        next_hood = None
        if NEXT_PREFIX + "nodes" in record:
            next_hood = Neighbourhood.from_values(_unprefixed(record, NEXT_PREFIX))
        return cls(int(record["round"]), _ints(record, "active"), _ints(record, "dead"), next_hood)


@dataclass(frozen=True)
class UnmaskReply:
    """``unmask``: shares of the survivors' self-mask seeds and of the dropped nodes'
    mask-key seeds, and the node's encrypted shares for the next round when asked.
    """

    seed_nodes: list[int]
    seed_shares: list[bytes]
    key_nodes: list[int]
    key_shares: list[bytes]
    next_shares: EncryptedShares | None = None

    def to_record(self) -> ConfigRecord:  # noqa: D102
        values: dict[str, object] = {
            "seed-nodes": self.seed_nodes,
            "seed-shares": self.seed_shares,
            "key-nodes": self.key_nodes,
            "key-shares": self.key_shares,
        }
        record = stage_record(STAGE_UNMASK, values)
        if self.next_shares is not None:
            record[NEXT_PREFIX + "shared"] = True
            for key, value in self.next_shares.values().items():
                if value:  # Flower cannot size empty lists
                    record[NEXT_PREFIX + key] = value
        return record

    @classmethod
    def from_record(cls, record: ConfigRecord) -> UnmaskReply:  # noqa: D102
        next_shares = None
        if record.get(NEXT_PREFIX + "shared", False):
            next_shares = EncryptedShares.from_values(_unprefixed(record, NEXT_PREFIX))
        reply = cls(
            _ints(record, "seed-nodes"),
            _bytes(record, "seed-shares"),
            _ints(record, "key-nodes"),
            _bytes(record, "key-shares"),
            next_shares,
        )
        if len(reply.seed_nodes) != len(reply.seed_shares) or len(reply.key_nodes) != len(reply.key_shares):
            raise ProtocolError("unmask reply: nodes and shares of different lengths")
        return reply


@dataclass(frozen=True)
class SetupRequest:
    """``setup``: asks the node for fresh public keys for ``round``."""

    round: int

    def to_record(self) -> ConfigRecord:  # noqa: D102
        return stage_record(STAGE_SETUP, {"round": self.round})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> SetupRequest:  # noqa: D102
        return cls(int(record["round"]))


@dataclass(frozen=True)
class ShareKeysRequest:
    """``share-keys``: the node's neighbourhood with their public keys."""

    round: int
    hood: Neighbourhood

    def to_record(self) -> ConfigRecord:  # noqa: D102
        return stage_record(STAGE_SHARE_KEYS, {"round": self.round, **self.hood.values()})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ShareKeysRequest:  # noqa: D102
        return cls(int(record["round"]), Neighbourhood.from_values(record))


@dataclass(frozen=True)
class ShareKeysReply:
    """``share-keys``: the node's shares, encrypted for each neighbour."""

    shares: EncryptedShares

    def to_record(self) -> ConfigRecord:  # noqa: D102
        return stage_record(STAGE_SHARE_KEYS, self.shares.values())

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ShareKeysReply:  # noqa: D102
        return cls(EncryptedShares.from_values(record))
