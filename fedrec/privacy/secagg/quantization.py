"""SecAgg+'s arithmetic: what each client masks, and what the server unmasks.

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
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...protocol.secagg import MaskingParameters
from .crypto import CHUNK_WORDS, SEED_BYTES, KeyStream, SecAggError, add_masks

ROUNDING_KEY_SAMPLES = 4096  # values per tensor hashed into the rounding key


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
    settings: MaskingParameters,
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


def dequantize_mean(total: Sequence[np.ndarray], num_clients: int, settings: MaskingParameters) -> list[np.ndarray]:
    """The weighted mean update from the unmasked sum of ``num_clients`` vectors; a sum
    outside ``[0, num_clients * quantization-range]`` means a wrapped or corrupted input.
    """
    bound = num_clients * settings.quantization_range
    for v in total:
        if (v < 0).any() or (v > bound).any():
            raise SecAggError(
                f"the unmasked sum leaves [0, {bound}] (overflow or a corrupted masked input); round discarded"
            )
    weight = summed_weight(total, settings)
    if weight == 0:
        raise SecAggError("the securely summed weight is 0: no survivor trained")
    c, levels = settings.clipping_range, settings.quantization_range
    return [(v.astype(np.float64) * (2 * c / levels) - num_clients * c) / weight for v in total[1:]]


def summed_weight(total: Sequence[np.ndarray], settings: MaskingParameters) -> float:
    """The survivors' summed ``r = weight / max-weight`` from an unmasked sum (its first entry)."""
    return int(total[0][0]) / settings.quantization_range
