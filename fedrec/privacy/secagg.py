"""SecAgg+ (Bell et al., CCS 2020) building blocks shared by the client mod and the
server's grid: settings, the communication graph, key agreement, the mask PRG,
quantization and the server's unmasking.

What is summed is each client's weighted update ``r * (local - global)`` with
``r = num-examples / max-weight`` (at most 1), clipped to ``[-clipping-range,
clipping-range]``, stochastically rounded onto ``0..quantization-range`` and prefixed by
the quantized weight ``round(r * quantization-range)``. Each of the ``n`` survivors
contributes at most ``quantization-range`` per coordinate, so the sum is exact modulo
``modulus-range`` whenever ``n * quantization-range < modulus-range`` (checked at
start-up, and again on the unmasked sum). Against plain FedAvg of the same unclipped
updates, the error per coordinate is at most ``n * (2 * clipping-range + max|update|) /
(quantization-range * sum(r))``: one rounding step per client, plus the rounding of
each weight to a multiple of ``1 / quantization-range``. The rounding is drawn from a
key stream keyed by the update itself (:func:`rounding_key`), so a run repeated with
the same seeds (or resumed from a checkpoint) aggregates to the same adapter.

Cryptography comes from ``cryptography`` (X25519, HKDF-SHA256, AES-256-CTR),
pycryptodome's Shamir scheme and Flower's public helpers (Fernet channel encryption).
Masks are AES-256-CTR key streams (1.6x the speed of ChaCha20 on AES-NI CPUs): Flower's
``pseudo_rand_gen`` folds its seed to 32 bits and uses NumPy's Mersenne Twister, which
is not a cryptographic PRG. Shares have the layout of Flower's
``create_shares`` (a 4-byte index, then one 16-byte share per 16-byte chunk) without its
padding block: the secrets are 32-byte keys and seeds, and a third chunk (plus a thread
pool per secret) made reconstruction the server's largest unmasking cost.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import ConfigRecord

SECAGG_RECORD = "secagg"  # name of the ConfigRecord that carries a protocol stage
MASKED_RECORD = "masked"  # name of the ArrayRecord that carries a masked vector
WEIGHT_KEY = "__weight__"  # first entry of a masked vector: the quantized weight
NEXT_PREFIX = "next-"  # stage values about the next round (its keys, neighbourhood, shares)

STAGE_SETUP = "setup"
STAGE_SHARE_KEYS = "share-keys"
STAGE_COLLECT = "collect-masked"
STAGE_UNMASK = "unmask"


def stage_record(stage: str, values: Mapping[str, object]) -> ConfigRecord:
    """A stage's ``secagg`` record. Empty lists are left out (Flower cannot size them);
    readers use ``record.get(key, [])``.
    """
    return ConfigRecord({"stage": stage, **{k: v for k, v in values.items() if not (isinstance(v, list) and not v)}})


class SecAggError(RuntimeError):
    """A round of secure aggregation cannot complete (named reason)."""


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+ parameters (config keys of the same names, kebab-case)."""

    num_shares: int = 5
    reconstruction_threshold: int = 3
    clipping_range: float = 4.0
    quantization_range: int = 1 << 22
    modulus_range: int = 1 << 32
    max_weight: float = 10_000.0
    timeout: float = 600.0
    weight_key: str = "num-examples"  # the reply metric that weights a client's update

    def check(self, num_clients: int) -> None:
        """Refuse settings under which ``num_clients`` survivors could overflow or the
        graph cannot reconstruct anything.
        """
        if self.modulus_range & (self.modulus_range - 1) or not 2 <= self.modulus_range <= 1 << 32:
            raise ValueError(f"modulus-range must be a power of two in [2, 2**32], got {self.modulus_range}")
        if num_clients * self.quantization_range >= self.modulus_range:
            raise ValueError(
                f"{num_clients} clients x quantization-range {self.quantization_range} >= modulus-range "
                f"{self.modulus_range}: the masked sum could wrap; lower quantization-range or raise modulus-range"
            )
        if self.num_shares < 3:
            raise ValueError(f"num-shares must be at least 3, got {self.num_shares}")
        if not 2 <= self.reconstruction_threshold <= self.num_shares:
            raise ValueError(
                f"reconstruction-threshold must be in [2, num-shares = {self.num_shares}], "
                f"got {self.reconstruction_threshold}"
            )
        if self.clipping_range <= 0 or self.max_weight <= 0 or self.timeout <= 0:
            raise ValueError("clipping-range, max-weight and secagg-timeout must be > 0")

    def masking_values(self) -> dict[str, float | int | str]:
        """What a client needs to quantize and mask (sent with the collect stage)."""
        return {
            "clipping-range": self.clipping_range,
            "quantization-range": self.quantization_range,
            "modulus-range": self.modulus_range,
            "max-weight": self.max_weight,
            "weight-key": self.weight_key,
        }

    @classmethod
    def from_masking_values(cls, values: Mapping[str, object]) -> SecAggSettings:
        """The client's view of the settings, from :meth:`masking_values`."""
        return cls(
            clipping_range=float(values["clipping-range"]),
            quantization_range=int(values["quantization-range"]),
            modulus_range=int(values["modulus-range"]),
            max_weight=float(values["max-weight"]),
            weight_key=str(values["weight-key"]),
        )

    def threshold_for(self, group_size: int) -> int:
        """Shares needed to reconstruct a secret shared among ``group_size`` nodes."""
        return min(self.reconstruction_threshold, group_size)


def neighbours(node_ids: Sequence[int], num_shares: int) -> dict[int, list[int]]:
    """The SecAgg+ communication graph: nodes on a ring (in the given order), each
    linked to itself and its ``(num_shares - 1) // 2`` nearest on either side (every
    node when ``num_shares`` covers them all). Each node's secrets are shared among
    its neighbourhood.
    """
    n = len(node_ids)
    half = (num_shares - 1) // 2
    if 2 * half + 1 >= n:
        return {node: sorted(node_ids) for node in node_ids}
    return {node: sorted(node_ids[(i + k) % n] for k in range(-half, half + 1)) for i, node in enumerate(node_ids)}


# ---- keys --------------------------------------------------------------------------
def new_private_key() -> bytes:
    """A fresh X25519 private key, raw bytes."""
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    """The raw X25519 public key of ``private``."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def agreed_key(private: bytes, peer_public: bytes) -> bytes:
    """32 bytes both ends derive: HKDF-SHA256 of the X25519 shared secret."""
    secret = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedrec-secagg").derive(secret)


def channel_key(private: bytes, peer_public: bytes) -> bytes:
    """A Fernet key for the encrypted channel between two nodes."""
    return base64.urlsafe_b64encode(agreed_key(private, peer_public))


def share_secret(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """Shamir shares of ``secret`` (a multiple of 16 bytes; any ``threshold`` of the
    ``num`` shares reconstruct it).
    """
    if not secret or len(secret) % 16:
        raise ValueError(f"a shared secret must be a non-empty multiple of 16 bytes, got {len(secret)}")
    shares = [bytearray(index.to_bytes(4, "little")) for index in range(1, num + 1)]
    for start in range(0, len(secret), 16):
        for index, share in Shamir.split(threshold, num, secret[start : start + 16], ssss=False):
            shares[index - 1] += share
    return [bytes(share) for share in shares]


def reconstruct_secret(shares: Sequence[bytes]) -> bytes:
    """The secret from enough Shamir shares. Wrong shares give a wrong secret, which
    the server's range check on the unmasked sum catches.
    """
    if not shares or len({len(s) for s in shares}) != 1 or len(shares[0]) <= 4 or (len(shares[0]) - 4) % 16:
        raise ValueError("shares of different or malformed lengths")
    indices = [int.from_bytes(share[:4], "little") for share in shares]
    if len(set(indices)) != len(indices):
        raise ValueError(f"repeated share indices {sorted(indices)}")
    return b"".join(
        Shamir.combine([(i, share[start : start + 16]) for i, share in zip(indices, shares, strict=True)], ssss=False)
        for start in range(4, len(shares[0]), 16)
    )


# ---- masks and quantization ---------------------------------------------------------
def prg_words(seed: bytes, count: int) -> np.ndarray:
    """``count`` uniform ``uint32`` words: the AES-256-CTR key stream of the 32-byte ``seed``."""
    stream = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(stream.update(bytes(4 * count)), dtype="<u4")


def prg_mask(seed: bytes, modulus: int, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """A mask: :func:`prg_words` of ``seed``, one array per shape; reduced mod ``modulus``
    (a power of two <= 2**32) they are uniform. Mask arithmetic runs in ``uint32``, whose
    wrap-around is arithmetic mod 2**32 and hence mod ``modulus``; results are reduced
    once at the end (:func:`reduce`).
    """
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    words = prg_words(seed, sum(sizes))
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(words[start : start + size].reshape(shape))
        start += size
    return out


def reduce(vectors: Sequence[np.ndarray], modulus: int) -> list[np.ndarray]:
    """``uint32`` vectors mod ``modulus``."""
    return [v & np.uint32(modulus - 1) for v in vectors] if modulus < 1 << 32 else list(vectors)


@dataclass(frozen=True)
class QuantizedUpdate:
    """A client's quantized weighted update and how many values were clipped."""

    vectors: list[np.ndarray]  # uint32: quantized weight first, then one array per tensor
    clipped: int


def rounding_key(values: Sequence[np.ndarray], weight: float) -> bytes:
    """The key of one update's stochastic rounding: SHA-256 of its weight and the trained
    values as they are (float32 adapters hash half the bytes of their float64 deltas), so
    the same update of the same global adapter rounds the same way and different updates
    independently. The rounding is not a privacy mechanism; the masks hide the result.
    """
    digest = hashlib.sha256(np.float64(weight).tobytes())
    for array in values:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array))
    return digest.digest()


def quantize_update(
    deltas: Sequence[np.ndarray], weight: float, settings: SecAggSettings, key: bytes
) -> QuantizedUpdate:
    """Weight, clip, and stochastically round ``deltas`` onto ``0..quantization-range``:
    ``floor(x + u)``, with ``u`` uniform in ``[0, 1)`` drawn from the key stream of the
    32-byte ``key`` (:func:`rounding_key`), rounds ``x`` up with probability equal to its
    fractional part.
    """
    ratio = weight / settings.max_weight
    if not 0.0 <= ratio <= 1.0:
        raise SecAggError(f"weight {weight:g} is outside [0, max-weight = {settings.max_weight:g}]")
    q_weight = round(ratio * settings.quantization_range)
    scale = q_weight / settings.quantization_range  # the weight the server will see
    c, levels = settings.clipping_range, settings.quantization_range
    vectors, clipped = [np.array([q_weight], dtype=np.uint32)], 0
    uniforms = prg_words(key, sum(int(np.size(d)) for d in deltas)) * 2.0**-32
    start = 0
    for delta in deltas:
        position = np.asarray(delta, dtype=np.float64) * scale
        if not np.isfinite(position).all():
            raise SecAggError("the update holds non-finite values")
        clipped += int(np.count_nonzero(position > c) + np.count_nonzero(position < -c))
        np.clip(position, -c, c, out=position)
        position *= levels / (2 * c)
        position += uniforms[start : start + position.size].reshape(position.shape)
        start += position.size
        position += levels / 2
        vectors.append(np.floor(position, out=position).astype(np.uint32))
    return QuantizedUpdate(vectors, clipped)


def mask_vectors(
    vectors: Sequence[np.ndarray],
    self_seed: bytes,
    pair_seeds: Mapping[int, bytes],
    own_id: int,
    modulus: int,
) -> list[np.ndarray]:
    """Add the self mask and, per neighbour, +mask (own id larger) or -mask, mod ``modulus``."""
    shapes = [v.shape for v in vectors]
    out = [v + m for v, m in zip(vectors, prg_mask(self_seed, modulus, shapes), strict=True)]
    for peer, seed in pair_seeds.items():
        for v, m in zip(out, prg_mask(seed, modulus, shapes), strict=True):
            if own_id > peer:
                v += m
            else:
                v -= m
    return reduce(out, modulus)


class MaskedSum:
    """The server's running sum of masked inputs (``uint32``, mod ``modulus``): inputs are
    added as they arrive and masks removed as their seeds are reconstructed. What is
    left once every survivor's self mask and every mask shared with a dropped node is
    removed is the sum of the survivors' quantized vectors.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], modulus: int) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.modulus = modulus
        self.total = [np.zeros(s, dtype=np.uint32) for s in self.shapes]

    def add(self, vectors: Sequence[np.ndarray]) -> None:
        """Add one masked input (``uint32`` arrays of :attr:`shapes`)."""
        for t, v in zip(self.total, vectors, strict=True):
            t += v

    def remove_self_mask(self, seed: bytes) -> None:
        """Undo a survivor's self mask."""
        for t, m in zip(self.total, prg_mask(seed, self.modulus, self.shapes), strict=True):
            t -= m

    def remove_pair_mask(self, survivor: int, dropped: int, seed: bytes) -> None:
        """Undo the mask ``survivor`` shared with ``dropped`` (whose input never arrived)."""
        for t, m in zip(self.total, prg_mask(seed, self.modulus, self.shapes), strict=True):
            if survivor > dropped:
                t -= m
            else:
                t += m

    def result(self) -> list[np.ndarray]:
        """The sum (``int64``), reduced mod ``modulus``."""
        return [v.astype(np.int64) for v in reduce(self.total, self.modulus)]


def dequantize_mean(total: Sequence[np.ndarray], num_clients: int, settings: SecAggSettings) -> list[np.ndarray]:
    """The weighted mean update from the unmasked sum of ``num_clients`` vectors; a sum
    outside ``[0, num_clients * quantization-range]`` means a wrapped or corrupted input.
    """
    bound = num_clients * settings.quantization_range
    for v in total:
        if (v < 0).any() or (v > bound).any():
            raise SecAggError(
                f"the unmasked sum leaves [0, {bound}] (overflow or a corrupted masked input); round discarded"
            )
    q_weight = int(total[0][0])
    if q_weight == 0:
        raise SecAggError("the securely summed weight is 0: no survivor trained")
    c, levels = settings.clipping_range, settings.quantization_range
    weight = q_weight / levels
    return [(v.astype(np.float64) * (2 * c / levels) - num_clients * c) / weight for v in total[1:]]
