"""SecAgg+ (Bell et al., CCS 2020) cryptography: the communication graph, key agreement,
Shamir sharing of 16-byte secrets and the AES-128-CTR key streams that mask updates.

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
import os
from collections.abc import Sequence

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 16  # self-mask seeds, mask-key seeds, pairwise mask seeds: AES-128 keys
CHUNK_WORDS = 1 << 15  # words masked or quantized at a time (256 KiB of float64 temporaries)
_ZERO_WORDS = memoryview(bytes(4 * CHUNK_WORDS))  # CTR mode encrypts zeros into the key stream


class SecAggError(RuntimeError):
    """A round of secure aggregation cannot complete (named reason)."""


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
