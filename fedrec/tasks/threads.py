"""Torch's thread count for blocks that must be repeatable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch's intra-op parallelism off for the block (restored after): the gradients of
    repeated embedding rows are summed in an order that depends on the threads.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
