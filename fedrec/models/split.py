"""The backbone split at its first LoRA layer ``k``: the frozen layers below compute the
input of layer ``k`` once per prompt (:meth:`SplitForward.prefix_batch`), and the layers
from ``k`` up (:meth:`SplitForward.hidden`) train and score from those cached states.

A :class:`SplitForward` holds views into the peft model, not submodules of it: a module
reachable by several paths of a module tree would get Opacus's per-sample hooks once per
path, multiplying its per-sample gradients.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask

from .errors import BackboneError
from .kinds import ModelKind
from .packing import PackedGroups
from .prefix_cache import shared_prefix_groups


def attend_to_self(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A 4D attention mask (boolean, or additive float) with every query allowed to
    attend to its own key. A left-padded row's pad queries otherwise see no key at all,
    and CUDA's fused attention can give such fully masked rows non-finite gradients
    (seen on an H200 with torch 2.11: finite scores, NaN LoRA gradients through 0 x NaN).
    Real tokens never attend to pad keys, so their outputs do not change.
    """
    if mask is None:
        return None
    eye = torch.eye(mask.shape[-2], mask.shape[-1], dtype=torch.bool, device=mask.device)
    return mask | eye if mask.dtype == torch.bool else mask.masked_fill(eye, 0.0)


class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass once the split input is captured."""


class _PassThrough(nn.Module):
    """Stands in for an encoder's embedding block: returns ``inputs_embeds``."""

    def forward(self, *args: object, inputs_embeds: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return inputs_embeds


def _view(module: nn.Module, path: str, replacement: nn.Module) -> nn.Module:
    """Shallow copy of ``module`` sharing all parameters, with ``path`` replaced."""
    head, _, rest = path.partition(".")
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._modules[head] = _view(module._modules[head], rest, replacement) if rest else replacement
    return clone


def layer_list(trunk: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module list holding the transformer layers, and its path in ``trunk``."""
    count = trunk.config.num_hidden_layers
    for name, module in trunk.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise BackboneError(f"cannot find the {count} transformer layers of {type(trunk).__name__}")


class SplitForward:
    """The trunk of a peft-wrapped backbone, split at layer ``split_layer``."""

    def __init__(self, trunk: nn.Module, layers_path: str, split_layer: int, kind: ModelKind) -> None:
        self.trunk, self.kind, self.split_layer = trunk, kind, split_layer
        self.layers = trunk.get_submodule(layers_path)
        tail = _view(trunk, layers_path, nn.ModuleList(list(self.layers)[split_layer:]))
        self.tail = _view(tail, "embeddings", _PassThrough()) if kind.name == "encoder" else tail
        top = self.layers[-1]
        self.last_position_top_layer = kind.name == "causal" and all(
            hasattr(top, name) for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
        )

    def pad(self, sequences: list[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to one batch (left for causal models, right for encoders) with a mask."""
        length = max((s.shape[0] for s in sequences), default=0)
        left = self.kind.left_padding
        padded, masks = [], []
        for s in sequences:
            pad = length - s.shape[0]
            widths = [0, 0] * (s.dim() - 1) + ([pad, 0] if left else [0, pad])
            padded.append(F.pad(s, widths, value=value))
            m = torch.ones(s.shape[0], dtype=torch.long)
            masks.append(F.pad(m, [pad, 0] if left else [0, pad]))
        return torch.stack(padded), torch.stack(masks)

    def run_to_split(self, autocast: Callable[[], object], **inputs: object) -> torch.Tensor:
        """Run the frozen trunk up to the split layer; its input states, float32 on CPU."""
        captured: list[torch.Tensor] = []

        def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        handle = self.layers[self.split_layer].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with autocast():  # type: ignore[attr-defined]
                self.trunk(**inputs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0].float().cpu()

    def prefix_batch(
        self, token_lists: list[list[int]], pad_id: int, device: torch.device, autocast: Callable[[], object]
    ) -> list[torch.Tensor]:
        """Split-layer states of each prompt, computed as one padded batch."""
        ids, mask = self.pad([torch.tensor(t) for t in token_lists], value=pad_id)
        ids, mask = ids.to(device), mask.to(device)
        states = self.run_to_split(autocast, input_ids=ids, attention_mask=mask, position_ids=self.kind.positions(mask))
        lengths = mask.sum(-1).tolist()
        if self.kind.left_padding:
            return [states[i, states.shape[1] - n :].clone() for i, n in enumerate(lengths)]
        return [states[i, :n].clone() for i, n in enumerate(lengths)]

    def states_of(
        self,
        token_lists: list[list[int]],
        batch_size: int,
        min_shared_tokens: int,
        pad_id: int,
        device: torch.device,
        autocast: Callable[[], object],
    ) -> list[torch.Tensor]:
        """Split-layer states of each prompt: single prompts batched by length, prompts
        sharing a leading run of ``min_shared_tokens`` or more (causal models) computed
        once for the run (:meth:`shared_prefix_batch`).
        """
        out: dict[int, torch.Tensor] = {}
        can_share = self.kind.name == "causal" and self.split_layer > 0
        groups = shared_prefix_groups(token_lists, min_shared_tokens if can_share else None)
        singles = sorted((g[1][0] for g in groups if len(g[1]) == 1), key=lambda i: len(token_lists[i]))
        for start in range(0, len(singles), batch_size):
            chunk = singles[start : start + batch_size]
            states = self.prefix_batch([token_lists[i] for i in chunk], pad_id, device, autocast)
            out |= dict(zip(chunk, states, strict=True))
        multi = sorted((g for g in groups if len(g[1]) > 1), key=lambda g: g[0])
        for start in range(0, len(multi), batch_size):
            chunk = multi[start : start + batch_size]
            shared = [token_lists[members[0]][:n] for n, members in chunk]
            suffixes = [[token_lists[i][n:] for i in members] for n, members in chunk]
            states = self.shared_prefix_batch(shared, suffixes, batch_size, pad_id, device, autocast)
            out |= dict(zip((i for _, members in chunk for i in members), states, strict=True))
        return [out[i] for i in range(len(token_lists))]

    def shared_prefix_batch(
        self,
        shared: list[list[int]],
        suffixes: list[list[list[int]]],
        batch_size: int,
        pad_id: int,
        device: torch.device,
        autocast: Callable[[], object],
    ) -> list[torch.Tensor]:
        """Split-layer states of ``shared[g] + suffix`` for every suffix of every group
        ``g`` (causal models): each shared prefix runs once, its keys and values serve
        its suffixes, which run in batches of similar length (little padding).
        """
        ids, mask = self.pad([torch.tensor(t) for t in shared], value=pad_id)
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache(config=self.trunk.config)
        shared_states = self.run_to_split(
            autocast,
            input_ids=ids,
            attention_mask=mask,
            position_ids=self.kind.positions(mask),
            past_key_values=cache,
            use_cache=True,
        )
        rows = [(g, suffix) for g, group in enumerate(suffixes) for suffix in group]
        by_length = sorted(range(len(rows)), key=lambda r: len(rows[r][1]))
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        for start in range(0, len(rows), batch_size):
            chunk = [rows[r] for r in by_length[start : start + batch_size]]
            index = torch.tensor([g for g, _ in chunk], device=device)
            s_ids, s_mask = self.pad([torch.tensor(t) for _, t in chunk], value=pad_id)
            s_ids, s_mask = s_ids.to(device), s_mask.to(device)
            past = DynamicCache(
                ddp_cache_data=[(layer.keys[index], layer.values[index]) for layer in cache.layers[: self.split_layer]]
            )
            positions = mask.sum(-1)[index, None] + (s_mask.cumsum(-1) - 1).clamp(min=0)
            states = self.run_to_split(
                autocast,
                input_ids=s_ids,
                attention_mask=torch.cat([mask[index], s_mask], dim=-1),
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
            )
            for row, (g, suffix) in enumerate(chunk):
                prefix = shared_states[g, shared_states.shape[1] - len(shared[g]) :]
                suffix_states = states[row, states.shape[1] - len(suffix) :]
                out[by_length[start + row]] = torch.cat([prefix, suffix_states]).clone()
        return out

    def hidden(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states of every position, from split-layer states ``[B, T, d]``
        (a causal model's mask built here: see :func:`attend_to_self`).
        """
        positions = self.kind.positions(mask)
        attention = self._causal_mask(states, mask, positions) if self.kind.name == "causal" else mask
        return self.tail(inputs_embeds=states, attention_mask=attention, position_ids=positions).last_hidden_state

    def _causal_mask(
        self,
        states: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor | None,
        and_mask_function: Callable | None = None,
    ) -> torch.Tensor | None:
        """The backbone's own 4D causal mask of a padded batch (None: no padding, plain
        causal), narrowed by ``and_mask_function``, with every query attending at least to itself.
        """
        causal = create_causal_mask(
            config=self.trunk.config,
            inputs_embeds=states,
            attention_mask=mask,
            past_key_values=None,
            position_ids=positions,
            and_mask_function=and_mask_function,
        )
        return attend_to_self(causal)

    def last_hidden(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden state at the last position (causal models). With
        :attr:`last_position_top_layer`, the top layer's attention runs over every
        position (its keys and values need them) but its residual stream and MLP only at
        the last one, the only position an answer reads.
        """
        if not self.last_position_top_layer:
            return self.hidden(states, mask)[:, -1]
        positions = self.kind.positions(mask)
        last = torch.full((states.shape[0], 1), states.shape[1] - 1, device=states.device)
        return self._answer_hidden(states, self._causal_mask(states, mask, positions), positions, last)[:, 0]

    def packed_answer_hidden(self, packed: PackedGroups, states: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states ``[B, G, d]`` at each member's last token of packed
        groups (:mod:`.packing`), from their split-layer ``states`` (soft tokens added);
        needs :attr:`last_position_top_layer`.
        """
        if not self.last_position_top_layer:
            raise BackboneError("packed groups need a causal LM with a Llama-style top layer")
        attention = self._causal_mask(states, packed.padding_mask, packed.positions, packed.same_member_or_prefix())
        return self._answer_hidden(states, attention, packed.positions, packed.answers)

    def _answer_hidden(
        self, states: torch.Tensor, attention: torch.Tensor | None, positions: torch.Tensor, answers: torch.Tensor
    ) -> torch.Tensor:
        """The layers from the split up, the top one's residual stream and MLP only at
        the ``answers`` positions ``[B, G]`` (its attention still reads every position).
        """
        layers = self.layers[self.split_layer :]
        rotary = self.trunk.rotary_emb(states, position_ids=positions)
        hidden = states
        for layer in layers[:-1]:
            hidden = layer(hidden, attention_mask=attention, position_embeddings=rotary, position_ids=positions)
        top = layers[-1]
        attended = top.self_attn(top.input_layernorm(hidden), attention_mask=attention, position_embeddings=rotary)[0]
        index = answers[..., None].expand(-1, -1, hidden.shape[-1])
        last = hidden.gather(1, index) + attended.gather(1, index)
        last = last + top.mlp(top.post_attention_layernorm(last))
        return self.trunk.norm(last)
