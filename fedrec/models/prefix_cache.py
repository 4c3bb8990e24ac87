"""The process-wide cache of split-layer states, and grouping prompts by shared prefix."""

from __future__ import annotations

from collections import OrderedDict

import torch


def shared_prefix_groups(token_lists: list[list[int]], min_shared: int | None) -> list[tuple[int, list[int]]]:
    """Group prompts that share a leading run of at least ``min_shared`` tokens, as
    ``(shared length, indices)``; every member keeps at least one token of its own.
    ``min_shared`` None puts every prompt in its own group.
    """
    if min_shared is None:
        return [(len(t), [i]) for i, t in enumerate(token_lists)]
    groups: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(token_lists)), key=lambda i: token_lists[i]):
        tokens = token_lists[i]
        if groups:
            shared, members = groups[-1]
            first = token_lists[members[0]]
            common = common_prefix_length(first, tokens)
            common = min(common, shared if len(members) > 1 else len(first) - 1, len(tokens) - 1)
            if common >= min_shared:
                groups[-1] = (common, [*members, i])
                continue
        groups.append((len(tokens), [i]))
    return groups


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the common leading run of two token lists."""
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def shared_length(token_lists: list[list[int]]) -> int:
    """Tokens every prompt shares, each prompt keeping one of its own."""
    shared = min(len(t) for t in token_lists) - 1
    for tokens in token_lists[1:]:
        shared = min(shared, common_prefix_length(token_lists[0], tokens))
    return shared


class PrefixCache:
    """Least-recently-used store of split-layer states, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor, or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store ``value``, evicting the least recently used entries beyond the bound."""
        self.drop(key)
        self._items[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        """Forget every entry (as a fresh process starts)."""
        self._items.clear()
        self._bytes = 0

    def drop(self, key: str) -> None:
        """Forget ``key`` if present."""
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()


PREFIX_CACHE = PrefixCache(max_bytes=4 << 30)
