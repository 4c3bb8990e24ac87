"""Scoring many prompts that differ only after a shared prefix (one user's history, many
candidate items): the prefix runs once through the whole model, adapter included, and
the candidates' suffixes run in batches on copies of its key/value cache. The input of
the split layer is kept on the way (the frozen layers' states of every prompt), so that a
later scoring of the same candidates runs only the layers above it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.cache_utils import DynamicCache

from .heads import AnswerMarginHead
from .split import SplitForward


@torch.no_grad()
def score_after_shared_prefix(
    split: SplitForward,
    head: AnswerMarginHead,
    token_lists: list[list[int]],
    shared: int,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], object],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Scores of causal-LM prompts whose first ``shared`` tokens are equal, and each
    prompt's split-layer states (float32, on the CPU).
    """
    trunk = split.trunk
    scores, captured, suffix_states = [], [], []
    handle = split.layers[split.split_layer].register_forward_pre_hook(
        lambda _module, args, kwargs: captured.append((args[0] if args else kwargs["hidden_states"]).float().cpu()),
        with_kwargs=True,
    )
    with autocast(), _removed(handle):  # type: ignore[attr-defined]
        cache = DynamicCache(config=trunk.config)
        trunk(input_ids=torch.tensor([token_lists[0][:shared]], device=device), past_key_values=cache, use_cache=True)
        prefix = captured.pop()[0]
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))  # batches of like length
        for start in range(0, len(order), batch_size):
            suffixes = [torch.tensor(token_lists[i][shared:]) for i in order[start : start + batch_size]]
            lengths = torch.tensor([len(t) for t in suffixes], device=device)
            ids = nn.utils.rnn.pad_sequence(suffixes, batch_first=True, padding_value=pad_id).to(device)
            rows, width = ids.shape
            suffix_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
            index = torch.zeros(rows, dtype=torch.long, device=device)
            past = DynamicCache(ddp_cache_data=[(layer.keys[index], layer.values[index]) for layer in cache.layers])
            hidden = trunk(
                input_ids=ids,
                attention_mask=torch.cat([torch.ones(rows, shared, dtype=torch.long, device=device), suffix_mask], 1),
                position_ids=shared + torch.arange(width, device=device)[None].expand(rows, -1),
                past_key_values=past,
                use_cache=True,
            ).last_hidden_state
            last = hidden[torch.arange(rows, device=device), lengths - 1].float()
            scores.append(head.margin(last))
            suffix_states += [
                torch.cat([prefix, row[:n]]) for row, n in zip(captured.pop(), lengths.tolist(), strict=True)
            ]
    result = torch.empty(len(token_lists))
    result[torch.tensor(order)] = torch.cat(scores)
    states: list[torch.Tensor] = [torch.empty(0)] * len(token_lists)
    for i, state in zip(order, suffix_states, strict=True):
        states[i] = state
    return result, states


@contextmanager
def _removed(handle: RemovableHandle) -> Iterator[None]:
    """Remove a hook's ``handle`` when the block ends."""
    try:
        yield
    finally:
        handle.remove()
