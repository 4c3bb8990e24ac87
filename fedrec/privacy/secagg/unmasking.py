"""The server's side of one round's sum: masked inputs added as they arrive, shares kept
as they arrive, and masks removed as soon as their secrets can be reconstructed. What is
left once every survivor's self mask and every mask shared with a dropped node is
removed is the sum of the survivors' quantized updates.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord

from ...protocol.secagg import MaskingParameters, PublicKeys, UnmaskReply
from .crypto import SecAggError, agreed_key, mask_private_key, reconstruct_secret
from .quantization import MaskedSum, dequantize_mean, summed_weight

Inbox = dict[int, tuple[list[int], list[bytes]]]  # node -> (sources, ciphertexts) of the shares it holds


class Unmasker:
    """One round's masked sum and the shares that unmask it."""

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        masking: MaskingParameters,
        keys: Mapping[int, PublicKeys],
        inbox: Inbox,
        threshold: Mapping[int, int],
    ) -> None:
        self.shapes, self.names = dict(shapes), list(shapes)
        self.masking, self.keys, self.inbox, self.threshold = masking, keys, inbox, threshold
        self.masked_sum = MaskedSum([self.shapes[k] for k in self.names], masking.modulus_range)
        self.masked_from: list[int] = []  # nodes whose masked input is in the sum
        self.seed_shares: dict[int, list[bytes]] = {}  # survivor -> shares of its self-mask seed
        self.key_shares: dict[int, list[bytes]] = {}  # dropped node -> shares of its mask-key seed
        self.error: SecAggError | None = None
        self.summed_weight = 0.0  # the survivors' summed r, once unmasked

    def add(self, node: int, masked: ArrayRecord | None) -> None:
        """Check a masked input against the adapter's tensors and the modulus, then add it."""
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
            if values.dtype != np.uint32 or (values.size and int(values.max()) >= self.masking.modulus_range):
                raise SecAggError(f"masked tensor {name!r} is not uint32 in [0, modulus-range)")
        self.masked_sum.add(vectors)
        self.masked_from.append(node)

    def expect(self, survivors: list[int], dead: set[int]) -> None:
        """The secrets to reconstruct: survivors' self-mask seeds, dropped nodes' mask keys."""
        self.seed_shares = {n: [] for n in survivors}
        self.key_shares = {n: [] for n in dead}

    def take(self, reply: UnmaskReply) -> None:
        """Keep a survivor's shares and remove the masks that have enough shares now."""
        for owner, share in zip(reply.seed_nodes, reply.seed_shares, strict=True):
            if owner in self.seed_shares:
                self.seed_shares[owner].append(share)
        for owner, share in zip(reply.key_nodes, reply.key_shares, strict=True):
            if owner in self.key_shares:
                self.key_shares[owner].append(share)
        try:
            self._unmask_ready()
        except SecAggError as err:
            self.error = self.error or err

    def _unmask_ready(self) -> None:
        for survivor in [n for n, shares in self.seed_shares.items() if len(shares) >= self.threshold[n]]:
            seed = self._reconstruct(survivor, self.seed_shares.pop(survivor), "self-mask seed")
            self.masked_sum.remove_self_mask(seed)
        for node in [n for n, shares in self.key_shares.items() if len(shares) >= self.threshold[n]]:
            key = mask_private_key(self._reconstruct(node, self.key_shares.pop(node), "mask-key seed"))
            for survivor in self.masked_from:
                if node in self.inbox[survivor][0]:  # the survivor masked with this node
                    self.masked_sum.remove_pair_mask(survivor, node, agreed_key(key, self.keys[survivor].mask))

    def _reconstruct(self, node: int, shares: list[bytes], what: str) -> bytes:
        try:
            return reconstruct_secret(shares[: self.threshold[node]])
        except ValueError as err:
            raise SecAggError(f"node {node}'s {what} cannot be reconstructed: {err}") from None

    def mean_update(self, survivors: int, dropped: Mapping[int, str]) -> list[np.ndarray]:
        """The survivors' weighted mean update, once every mask is removed."""
        if self.error is not None:
            raise self.error
        missing = {**self.seed_shares, **self.key_shares}
        if missing:
            node, shares = next(iter(missing.items()))
            what = "self-mask seed" if node in self.seed_shares else "mask-key seed"
            raise SecAggError(
                f"only {len(shares)} of the {self.threshold[node]} shares needed to reconstruct node {node}'s "
                f"{what} arrived (dropped: {dict(dropped)})"
            )
        total = self.masked_sum.result()
        self.summed_weight = summed_weight(total, self.masking)
        return dequantize_mean(total, survivors, self.masking)
