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

Cryptography comes from ``cryptography`` (X25519, HKDF-SHA256, AES-128-CTR),
pycryptodome's Shamir scheme and Flower's public helpers (Fernet channel encryption).
Masks are AES-128-CTR key streams of 16-byte seeds (AES-NI makes them several times the
speed of ChaCha20): Flower's ``pseudo_rand_gen`` folds its seed to 32 bits and uses
NumPy's Mersenne Twister, which is not a cryptographic PRG. Both shared secrets (the
self-mask seed and the seed of the mask private key) are 16 bytes, so each share is
Flower's ``create_shares`` layout (a 4-byte index, then a 16-byte share) in one Shamir
chunk: pycryptodome's pure-Python field arithmetic makes reconstruction the server's
largest unmasking cost, linear in the chunks.
"""

from __future__ import annotations

import base64
import hashlib
import os
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

SEED_BYTES = 16  # self-mask seeds, mask-key seeds, pairwise mask seeds: AES-128 keys
CHUNK_WORDS = 1 << 15  # words masked or quantized at a time (256 KiB of float64 temporaries)
ROUNDING_KEY_SAMPLES = 4096  # values per tensor hashed into the rounding key
_ZERO_WORDS = memoryview(bytes(4 * CHUNK_WORDS))  # CTR mode encrypts zeros into the key stream

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


def new_seed() -> bytes:
    """A fresh 16-byte secret: a self-mask seed or a mask-key seed."""
    return os.urandom(SEED_BYTES)


def mask_private_key(mask_seed: bytes) -> bytes:
    """The X25519 mask private key derived from its 16-byte seed (HKDF-SHA256). A node
    shares the seed rather than the 32-byte key: one Shamir chunk instead of two, which
    halves the server's reconstruction of a dropped node's key; 128 bits match X25519's
    security level.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedrec-secagg-mask-key").derive(mask_seed)


def public_key(private: bytes) -> bytes:
    """The raw X25519 public key of ``private``."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def agreed_key(private: bytes, peer_public: bytes, length: int = SEED_BYTES) -> bytes:
    """``length`` bytes both ends derive: HKDF-SHA256 of the X25519 shared secret (by
    default a pairwise mask seed).
    """
    secret = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"fedrec-secagg").derive(secret)


def channel_key(private: bytes, peer_public: bytes) -> bytes:
    """A Fernet key for the encrypted channel between two nodes."""
    return base64.urlsafe_b64encode(agreed_key(private, peer_public, 32))


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
class KeyStream:
    """The AES-128-CTR key stream of a 16-byte seed, read in order as uniform ``uint32``
    words, at most :data:`CHUNK_WORDS` at a time (masks and rounding draws are streamed
    chunk by chunk, so their temporaries stay in cache whatever the adapter's size).
    """

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a key stream seed has {SEED_BYTES} bytes, got {len(seed)}")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        self._buffer = bytearray(4 * CHUNK_WORDS + 15)  # update_into needs a block of slack

    def next_words(self, count: int) -> np.ndarray:
        """The next ``count`` words: a view that the following call overwrites."""
        self._encryptor.update_into(_ZERO_WORDS[: 4 * count], self._buffer)
        return np.frombuffer(self._buffer, dtype="<u4", count=count)


def add_masks(flat: np.ndarray, masks: Sequence[tuple[bytes, bool]], modulus: int) -> None:
    """Add (``True``) or subtract (``False``) the key stream of each seed to the flat
    ``uint32`` vector ``flat`` in place, then reduce it mod ``modulus`` (a power of two
    <= 2**32): ``uint32`` wrap-around is arithmetic mod 2**32 and hence mod ``modulus``.
    Reduced mod ``modulus``, a key stream is uniform.
    """
    streams = [(KeyStream(seed), add) for seed, add in masks]
    for start in range(0, flat.size, CHUNK_WORDS):
        part = flat[start : start + CHUNK_WORDS]
        for stream, add in streams:
            if add:
                part += stream.next_words(part.size)
            else:
                part -= stream.next_words(part.size)
        if modulus < 1 << 32:
            part &= np.uint32(modulus - 1)


def split_flat(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Views of consecutive pieces of ``flat`` with the given shapes."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    if start != flat.size:
        raise ValueError(f"{flat.size} values do not fill shapes {list(shapes)}")
    return out


@dataclass(frozen=True)
class QuantizedUpdate:
    """A client's quantized weighted update and how many values were clipped."""

    flat: np.ndarray  # uint32: the quantized weight, then every tensor's values in order
    clipped: int


def rounding_key(values: Sequence[np.ndarray], weight: float) -> bytes:
    """The key of one update's stochastic rounding: SHA-256 of its weight, the tensors'
    shapes and dtypes and up to :data:`ROUNDING_KEY_SAMPLES` evenly spaced values of each,
    so the same update of the same global adapter rounds the same way (a repeated or
    resumed run aggregates alike) and updates that differ anywhere in the sample round
    independently. The rounding is not a privacy mechanism; the masks hide the result.
    """
    digest = hashlib.sha256(np.float64(weight).tobytes())
    for array in values:
        flat = np.ravel(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(flat[:: max(1, flat.size // ROUNDING_KEY_SAMPLES)]))
    return digest.digest()[:SEED_BYTES]


def quantize_update(
    updated: Sequence[np.ndarray],
    base: Sequence[np.ndarray],
    weight: float,
    settings: SecAggSettings,
    key: bytes,
) -> QuantizedUpdate:
    """Weight, clip, and stochastically round the update ``updated - base`` onto
    ``0..quantization-range``: ``floor(x + u)``, with ``u`` uniform in ``[0, 1)`` drawn
    from the key stream of ``key`` (:func:`rounding_key`), rounds ``x`` up with
    probability equal to its fractional part. Computed in float64, chunk by chunk.
    """
    ratio = weight / settings.max_weight
    if not 0.0 <= ratio <= 1.0:
        raise SecAggError(f"weight {weight:g} is outside [0, max-weight = {settings.max_weight:g}]")
    levels = settings.quantization_range
    q_weight = round(ratio * levels)
    # position on the level axis: (delta * q_weight / levels) in [-c, c] maps onto [0, levels]
    factor, offset = q_weight / (2 * settings.clipping_range), levels / 2
    flat = np.empty(1 + sum(int(np.size(u)) for u in updated), dtype=np.uint32)
    flat[0] = q_weight
    rounding = KeyStream(key)
    position, uniform = np.empty(CHUNK_WORDS), np.empty(CHUNK_WORDS)
    clipped, written = 0, 1
    for new, old in zip(updated, base, strict=True):
        if np.shape(new) != np.shape(old):
            raise SecAggError(f"an updated tensor of shape {np.shape(new)} has a base of shape {np.shape(old)}")
        new, old = np.ravel(new), np.ravel(old)
        for start in range(0, new.size, CHUNK_WORDS):
            end = min(start + CHUNK_WORDS, new.size)
            x = position[: end - start]
            np.subtract(new[start:end], old[start:end], out=x, dtype=np.float64)
            x *= factor
            x += offset
            if not (0.0 <= x.min() and x.max() <= levels):  # also false for NaN
                if not np.isfinite(x).all():
                    raise SecAggError("the update holds non-finite values")
                clipped += int(np.count_nonzero(x < 0.0) + np.count_nonzero(x > levels))
                np.clip(x, 0.0, levels, out=x)
            u = np.multiply(rounding.next_words(x.size), 2.0**-32, out=uniform[: x.size])
            x += u
            flat[written : written + x.size] = x  # x >= 0: the cast floors
            written += x.size
    return QuantizedUpdate(flat, clipped)


def mask_update(flat: np.ndarray, self_seed: bytes, pair_seeds: Mapping[int, bytes], own_id: int, modulus: int) -> None:
    """Mask a quantized update in place: add the self mask and, per neighbour, +mask (own
    id larger) or -mask, mod ``modulus``.
    """
    add_masks(flat, [(self_seed, True), *((seed, own_id > peer) for peer, seed in pair_seeds.items())], modulus)


class MaskedSum:
    """The server's running sum of masked inputs (``uint32``, mod ``modulus``): inputs are
    added as they arrive and masks removed as their seeds are reconstructed. What is
    left once every survivor's self mask and every mask shared with a dropped node is
    removed is the sum of the survivors' quantized vectors.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], modulus: int) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.modulus = modulus
        self.flat = np.zeros(sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes), dtype=np.uint32)
        self.total = split_flat(self.flat, self.shapes)

    def add(self, vectors: Sequence[np.ndarray]) -> None:
        """Add one masked input (``uint32`` arrays of :attr:`shapes`)."""
        for t, v in zip(self.total, vectors, strict=True):
            t += v

    def remove_self_mask(self, seed: bytes) -> None:
        """Undo a survivor's self mask."""
        add_masks(self.flat, [(seed, False)], self.modulus)

    def remove_pair_mask(self, survivor: int, dropped: int, seed: bytes) -> None:
        """Undo the mask ``survivor`` shared with ``dropped`` (whose input never arrived)."""
        add_masks(self.flat, [(seed, survivor < dropped)], self.modulus)

    def result(self) -> list[np.ndarray]:
        """The sum (``int64``), reduced mod ``modulus``."""
        return [(t & np.uint32(self.modulus - 1) if self.modulus < 1 << 32 else t).astype(np.int64) for t in self.total]


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
