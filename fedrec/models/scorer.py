"""Preference scoring with a frozen backbone plus LoRA, split at the first LoRA layer.

The backbone is frozen, so when LoRA sits only on layers ``k..L-1`` the input of
layer ``k`` is a fixed function of the prompt: :class:`PreferenceScorer` computes it
once per prompt (:meth:`PreferenceScorer.prefix_states`, cached per process) and
trains and scores from it (:meth:`PreferenceScorer.forward`). With LoRA on all layers
``k = 0`` and the cached state is the token embedding. A self-check at construction
verifies that the split path reproduces the model's own forward.

Causal LMs score ``logit("Yes") - logit("No")`` at the last position, computing only
those two rows of the output projection; encoders score with a small trainable head
over mean-pooled states.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask

from .backbone import Backbone, BackboneError
from .prefix_store import PrefixStore

ANSWER_SYSTEM_PROMPT = "You are a recommender system."
PREFIX_BATCH_SIZE = 16  # prompts per frozen-prefix forward
MIN_SHARED_TOKENS = 32  # shortest leading run of tokens worth computing once for several prompts


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (as in ``peft.LoraConfig``); ``top_layers`` = 0 puts
    LoRA on every layer, N > 0 on the top N only.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    top_layers: int = 0
    freeze_a: bool = False
    seed: int = 0


class EncoderWithHead(nn.Module):
    """An encoder trunk with a linear scoring head over mean-pooled states."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        self.config = encoder.config


@dataclass(frozen=True)
class _Parts:
    """The transformer trunk, its layer list, and the trunk above the split layer."""

    trunk: nn.Module
    layers: nn.ModuleList
    tail: nn.Module


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


def _layer_list(trunk: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module list holding the transformer layers, and its path in ``trunk``."""
    count = trunk.config.num_hidden_layers
    for name, module in trunk.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise BackboneError(f"cannot find the {count} transformer layers of {type(trunk).__name__}")


class PreferenceScorer(nn.Module):
    """Frozen backbone + peft LoRA adapter; ``forward`` maps cached layer-``k``
    states to preference logits.
    """

    def __init__(
        self, backbone: Backbone, lora: LoraSettings, max_length: int = 256, compute_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype
        self.backbone_name = backbone.name
        self.fingerprint = backbone.fingerprint
        self.kind = backbone.kind
        self.tokenizer = backbone.tokenizer
        self.max_length = max_length
        base = backbone.model if self.kind == "causal" else EncoderWithHead(backbone.model)
        trunk = base.base_model if self.kind == "causal" else base.encoder
        layers_path, layers = _layer_list(trunk)
        num_layers = len(layers)
        if lora.top_layers > num_layers:
            raise BackboneError(f"lora-layers = {lora.top_layers} but the backbone has {num_layers} layers")
        self.split_layer = num_layers - lora.top_layers if lora.top_layers else 0
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            layers_to_transform=list(range(self.split_layer, num_layers)) if lora.top_layers else None,
            layers_pattern=layers_path.rsplit(".", 1)[-1] if lora.top_layers else None,
            modules_to_save=["head"] if self.kind == "encoder" else None,
        )
        torch.manual_seed(lora.seed)
        try:
            self.peft: PeftModel = get_peft_model(base, config)
        except ValueError as err:
            raise BackboneError(f"cannot attach LoRA to {backbone.name}: {err}") from None
        self.reset_adapter(lora.seed)
        if lora.freeze_a:
            for name, param in self.peft.named_parameters():
                if "lora_A" in name:
                    param.requires_grad_(False)
        tail = _view(trunk, layers_path, nn.ModuleList(list(layers)[self.split_layer :]))
        if self.kind == "encoder":
            tail = _view(tail, "embeddings", _PassThrough())
        # Views into ``self.peft``, kept out of the module tree: a submodule reachable by
        # several paths would get Opacus's per-sample hooks once per path, multiplying
        # its per-sample gradients.
        self._parts = _Parts(trunk, layers, tail)
        self._build_prompt_template()
        top = layers[-1]
        self.last_position_top_layer = self.kind == "causal" and all(
            hasattr(top, name) for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
        )
        self.eval()
        self._check_split()

    def train(self, mode: bool = True) -> PreferenceScorer:
        """Training mode reaches only the adapter (its layers and LoRA dropout): the
        frozen backbone always runs as in evaluation, so cached states stay valid.
        """
        super().train(False)
        if mode:
            for module in self.peft.modules():
                if isinstance(module, LoraLayer):
                    module.lora_dropout.train()
                elif any(p.requires_grad for p in module.parameters(recurse=False)):
                    module.train()
        self.training = mode
        return self

    # ---- prompts -------------------------------------------------------------
    def _build_prompt_template(self) -> None:
        """Token ids around the prompt content, and the Yes/No answer token ids."""
        tok = self.tokenizer
        if self.kind == "encoder":
            special = tok("")["input_ids"]
            self._head_ids, self._tail_ids = special[:1], special[1:]
            return
        if tok.chat_template:
            marker = "\u0001CONTENT\u0001"
            text = tok.apply_chat_template(
                [{"role": "system", "content": ANSWER_SYSTEM_PROMPT}, {"role": "user", "content": marker}],
                tokenize=False,
                add_generation_prompt=True,
            )
            before, after = text.split(marker)
            answer_prefix = ""  # the assistant turn starts without a leading space
            bos: list[int] = []
        else:
            before, after, answer_prefix = "", "\nAnswer:", " "
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        self._head_ids = bos + tok.encode(before, add_special_tokens=False)
        self._tail_ids = tok.encode(after, add_special_tokens=False)
        yes = tok.encode(answer_prefix + "Yes", add_special_tokens=False)
        no = tok.encode(answer_prefix + "No", add_special_tokens=False)
        if yes[0] == no[0]:
            raise BackboneError(f"{self.backbone_name}: 'Yes' and 'No' share their first token")
        self._answer_ids = torch.tensor([yes[0], no[0]])

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each prompt inside the chat template, truncated to
        ``max_length`` by dropping the oldest part of the content.
        """
        budget = self.max_length - len(self._head_ids) - len(self._tail_ids)
        if budget <= 8:
            raise BackboneError(f"max-length {self.max_length} leaves no room for the prompt")
        contents = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [self._head_ids + ids[-budget:] + self._tail_ids for ids in contents]

    # ---- split forward -------------------------------------------------------
    def _pad(self, sequences: list[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to one batch (left for causal models, right for encoders) with a mask."""
        length = max((s.shape[0] for s in sequences), default=0)
        left = self.kind == "causal"
        padded, masks = [], []
        for s in sequences:
            pad = length - s.shape[0]
            widths = [0, 0] * (s.dim() - 1) + ([pad, 0] if left else [0, pad])
            padded.append(F.pad(s, widths, value=value))
            m = torch.ones(s.shape[0], dtype=torch.long)
            masks.append(F.pad(m, [pad, 0] if left else [0, pad]))
        return torch.stack(padded), torch.stack(masks)

    def _positions(self, mask: torch.Tensor) -> torch.Tensor | None:
        return (mask.cumsum(-1) - 1).clamp(min=0) if self.kind == "causal" else None

    @torch.no_grad()
    def _prefix_batch(self, token_lists: list[list[int]]) -> list[torch.Tensor]:
        device = self._device()
        ids, mask = self._pad([torch.tensor(t) for t in token_lists], value=self.tokenizer.pad_token_id or 0)
        ids, mask = ids.to(device), mask.to(device)
        states = self._run_to_split(input_ids=ids, attention_mask=mask, position_ids=self._positions(mask))
        lengths = mask.sum(-1).tolist()
        if self.kind == "causal":
            return [states[i, states.shape[1] - n :].clone() for i, n in enumerate(lengths)]
        return [states[i, :n].clone() for i, n in enumerate(lengths)]

    @torch.no_grad()
    def _shared_prefix_batch(
        self, shared: list[list[int]], suffixes: list[list[list[int]]], batch_size: int
    ) -> list[torch.Tensor]:
        """Split-layer states of ``shared[g] + suffix`` for every suffix of every group
        ``g``: each shared prefix runs once, its keys and values serve its suffixes.
        """
        device = self._device()
        ids, mask = self._pad([torch.tensor(t) for t in shared], value=self.tokenizer.pad_token_id or 0)
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache(config=self._parts.trunk.config)
        shared_states = self._run_to_split(
            input_ids=ids,
            attention_mask=mask,
            position_ids=self._positions(mask),
            past_key_values=cache,
            use_cache=True,
        )
        rows = [(g, suffix) for g, group in enumerate(suffixes) for suffix in group]
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            index = torch.tensor([g for g, _ in chunk], device=device)
            s_ids, s_mask = self._pad([torch.tensor(t) for _, t in chunk], value=self.tokenizer.pad_token_id or 0)
            s_ids, s_mask = s_ids.to(device), s_mask.to(device)
            past = DynamicCache(
                ddp_cache_data=[(layer.keys[index], layer.values[index]) for layer in cache.layers[: self.split_layer]]
            )
            positions = mask.sum(-1)[index, None] + (s_mask.cumsum(-1) - 1).clamp(min=0)
            states = self._run_to_split(
                input_ids=s_ids,
                attention_mask=torch.cat([mask[index], s_mask], dim=-1),
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
            )
            for row, (g, suffix) in enumerate(chunk):
                n_shared = len(shared[g])
                out.append(
                    torch.cat(
                        [
                            shared_states[g, shared_states.shape[1] - n_shared :],
                            states[row, states.shape[1] - len(suffix) :],
                        ]
                    ).clone()
                )
        return out

    def _run_to_split(self, **inputs: object) -> torch.Tensor:
        """Run the frozen trunk up to the split layer; its input states, float32 on CPU."""
        captured: list[torch.Tensor] = []

        def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        device = self._device()
        handle = self._parts.layers[self.split_layer].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.autocast(device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
                self._parts.trunk(**inputs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0].float().cpu()

    def prefix_states(
        self,
        token_lists: list[list[int]],
        batch_size: int = PREFIX_BATCH_SIZE,
        min_shared_tokens: int = MIN_SHARED_TOKENS,
        store: PrefixStore | None = None,
    ) -> list[torch.Tensor]:
        """Input of the split layer for each prompt (frozen; cached per process, and as
        one file per prompt set in ``store`` when given).

        Prompts that share a leading run of at least ``min_shared_tokens`` tokens (a
        user's questions about several items after one history) have it computed once
        and reuse its keys and values. Prompts are batched by length; on CPU small
        batches are fastest (batch 16 ran 1.6-1.9x faster than 128 with SmolLM2).
        """
        if store is not None:
            keys = [self._cache_key(tokens) for tokens in token_lists]
            stored = store.load(keys)
            if stored is None:
                stored = self.prefix_states(token_lists, batch_size, min_shared_tokens)
                store.save(keys, stored)
            return stored
        out: dict[int, torch.Tensor] = {}
        missing = []
        for i, tokens in enumerate(token_lists):
            hit = PREFIX_CACHE.get(self._cache_key(tokens))
            if hit is None:
                missing.append(i)
            else:
                out[i] = hit
        can_share = self.kind == "causal" and self.split_layer > 0
        groups = shared_prefix_groups([token_lists[i] for i in missing], min_shared_tokens if can_share else None)
        singles = sorted((missing[g[1][0]] for g in groups if len(g[1]) == 1), key=lambda i: len(token_lists[i]))
        for start in range(0, len(singles), batch_size):
            chunk = singles[start : start + batch_size]
            for i, state in zip(chunk, self._prefix_batch([token_lists[i] for i in chunk]), strict=True):
                out[i] = state
        multi = sorted((g for g in groups if len(g[1]) > 1), key=lambda g: g[0])
        for start in range(0, len(multi), batch_size):
            chunk = multi[start : start + batch_size]
            members = [[missing[j] for j in g[1]] for g in chunk]
            shared = [token_lists[m[0]][:n] for (n, _), m in zip(chunk, members, strict=True)]
            suffixes = [[token_lists[i][n:] for i in m] for (n, _), m in zip(chunk, members, strict=True)]
            states = self._shared_prefix_batch(shared, suffixes, batch_size)
            for i, state in zip((i for m in members for i in m), states, strict=True):
                out[i] = state
        for i in missing:
            PREFIX_CACHE.put(self._cache_key(token_lists[i]), out[i])
        return [out[i] for i in range(len(token_lists))]

    def _cache_key(self, tokens: list[int]) -> str:
        digest = hashlib.sha1(torch.tensor(tokens, dtype=torch.int32).numpy().tobytes()).hexdigest()
        return f"{self.fingerprint}:{self.split_layer}:{self.compute_dtype}:{digest}"

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Preference logits of a padded batch of split-layer states ``[B, T, d]``."""
        with torch.autocast(states.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            if self.kind == "causal" and self.last_position_top_layer:
                last = self._last_hidden(states, mask).float()
            else:
                hidden = self._parts.tail(inputs_embeds=states, attention_mask=mask, position_ids=self._positions(mask))
                hidden = hidden.last_hidden_state.float()
                last = hidden[:, -1]
        if self.kind == "causal":
            weight = self.peft.get_output_embeddings().weight[self._answer_ids.to(last.device)]
            logits = F.linear(last, weight)
            return logits[:, 0] - logits[:, 1]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.peft.base_model.model.head(pooled).squeeze(-1)

    def _last_hidden(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden state at the last position. The top layer's attention runs
        over every position (its keys and values need them) but its residual stream and
        MLP only at the last one, the only position the answer reads.
        """
        trunk, layers = self._parts.trunk, self._parts.layers[self.split_layer :]
        positions = self._positions(mask)
        causal = create_causal_mask(
            config=trunk.config, inputs_embeds=states, attention_mask=mask, past_key_values=None, position_ids=positions
        )
        rotary = trunk.rotary_emb(states, position_ids=positions)
        hidden = states
        for layer in layers[:-1]:
            hidden = layer(hidden, attention_mask=causal, position_embeddings=rotary, position_ids=positions)
        top = layers[-1]
        attended = top.self_attn(top.input_layernorm(hidden), attention_mask=causal, position_embeddings=rotary)[0]
        last = hidden[:, -1] + attended[:, -1]
        last = last + top.mlp(top.post_attention_layernorm(last))
        return trunk.norm(last)

    def batch(self, states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad cached states into a batch on the model's device."""
        padded, mask = self._pad(states)
        device = self._device()
        return padded.to(device), mask.to(device)

    @torch.no_grad()
    def score(
        self, token_lists: list[list[int]], batch_size: int = 16, store: PrefixStore | None = None
    ) -> torch.Tensor:
        """Preference logits for tokenized prompts (evaluation; adapter in eval mode)."""
        was_training = self.training
        self.eval()
        states = self.prefix_states(token_lists, store=store)
        scores = [
            self(*self.batch(states[i : i + batch_size])).float().cpu() for i in range(0, len(states), batch_size)
        ]
        self.train(was_training)
        return torch.cat(scores) if scores else torch.empty(0)

    @torch.no_grad()
    def score_candidates(self, token_lists: list[list[int]], batch_size: int = 32) -> torch.Tensor:
        """Scores of prompts that differ only after a shared prefix (one user's history,
        many candidate items): the prefix runs once through the whole model, adapter
        included, and the candidate suffixes run in batches on copies of its key/value
        cache. Equals :meth:`full_forward_score` of each prompt (up to float error).
        """
        if self.kind != "causal" or len(token_lists) < 2:
            return self.score(token_lists, batch_size)
        shared = min(len(t) for t in token_lists) - 1  # each prompt keeps a token of its own
        for tokens in token_lists[1:]:
            shared = min(shared, _common_prefix_length(token_lists[0], tokens))
        if shared < 1:
            return self.score(token_lists, batch_size)
        was_training = self.training
        self.eval()
        device, trunk = self._device(), self._parts.trunk
        pad = self.tokenizer.pad_token_id or 0
        weight = self.peft.get_output_embeddings().weight[self._answer_ids.to(device)]
        scores = []
        with torch.autocast(device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            cache = DynamicCache(config=trunk.config)
            trunk(
                input_ids=torch.tensor([token_lists[0][:shared]], device=device), past_key_values=cache, use_cache=True
            )
            order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))  # batches of like length
            for start in range(0, len(order), batch_size):
                suffixes = [torch.tensor(token_lists[i][shared:]) for i in order[start : start + batch_size]]
                lengths = torch.tensor([len(t) for t in suffixes], device=device)
                ids = nn.utils.rnn.pad_sequence(suffixes, batch_first=True, padding_value=pad).to(device)
                rows, width = ids.shape
                suffix_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
                index = torch.zeros(rows, dtype=torch.long, device=device)
                past = DynamicCache(ddp_cache_data=[(layer.keys[index], layer.values[index]) for layer in cache.layers])
                hidden = trunk(
                    input_ids=ids,
                    attention_mask=torch.cat(
                        [torch.ones(rows, shared, dtype=torch.long, device=device), suffix_mask], 1
                    ),
                    position_ids=shared + torch.arange(width, device=device)[None].expand(rows, -1),
                    past_key_values=past,
                    use_cache=True,
                ).last_hidden_state
                last = hidden[torch.arange(rows, device=device), lengths - 1].float()
                scores.append(self._answer_margin(last, weight))
        self.train(was_training)
        result = torch.empty(len(token_lists))
        result[torch.tensor(order)] = torch.cat(scores)
        return result

    @torch.no_grad()
    def full_forward_score(self, tokens: list[int]) -> float:
        """Score one prompt with the model's own unsplit forward (for checks), under
        the same autocast as the other paths.
        """
        ids = torch.tensor([tokens], device=self._device())
        if self.kind == "causal":
            autocast = self.compute_dtype != torch.float32
            with torch.autocast(ids.device.type, dtype=self.compute_dtype, enabled=autocast):
                last = self._parts.trunk(input_ids=ids).last_hidden_state[:, -1].float()
            weight = self.peft.get_output_embeddings().weight[self._answer_ids.to(ids.device)]
            return float(self._answer_margin(last, weight)[0])
        model = self.peft.base_model.model
        hidden = model.encoder(input_ids=ids).last_hidden_state
        return float(model.head(hidden.mean(1)).squeeze())

    def _answer_margin(self, last: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``logit(Yes) - logit(No)`` from final hidden states, projected in float32
        outside autocast (a bfloat16 logit near 10 is only resolved to 0.06).
        """
        with torch.autocast(last.device.type, enabled=False):
            logits = F.linear(last.float(), weight.float())
        return (logits[:, 0] - logits[:, 1]).cpu()

    def _check_split(self) -> None:
        """Verify on a padded batch that the split forward reproduces the model's own;
        the last-position top layer is used only where it does.
        """
        prompts = ["Liked: a, b. Will the user like c? Answer Yes or No.", "Liked: d. Will the user like e?"]
        token_lists = self.encode(prompts)
        if self.last_position_top_layer and self._split_error(token_lists) is not None:
            self.last_position_top_layer = False
        error = self._split_error(token_lists)
        if error is not None:
            raise BackboneError(
                f"{self.backbone_name}: the split at layer {self.split_layer} does not reproduce the "
                f"model's forward ({error}); this architecture is not supported"
            )

    def _split_error(self, token_lists: list[list[int]]) -> str | None:
        """How the split scores of ``token_lists`` differ from the full forward's, or None."""
        dtype, self.compute_dtype = self.compute_dtype, torch.float32
        try:
            split = self.score(token_lists, batch_size=len(token_lists)).tolist()
            full = [self.full_forward_score(tokens) for tokens in token_lists]
        except (RuntimeError, TypeError, AttributeError) as err:
            return f"{type(err).__name__}: {err}"
        finally:
            for tokens in token_lists:
                PREFIX_CACHE.drop(self._cache_key(tokens))
            self.compute_dtype = dtype
        for s, f in zip(split, full, strict=True):
            if abs(s - f) > 1e-3 * max(1.0, abs(f)):
                return f"{s:.5f} vs {f:.5f}"
        return None

    def _device(self) -> torch.device:
        return next(self.peft.parameters()).device

    def reset_adapter(self, seed: int) -> None:
        """Re-initialise the adapter from ``seed``: B zero, and A with peft's
        distribution U(-1/sqrt(in), 1/sqrt(in)) drawn row by row from (seed, module,
        row), so that every rank's A is a slice of a larger rank's (FFA-LoRA with
        heterogeneous ranks) and the same on every machine.
        """
        torch.manual_seed(seed)
        for name, module in self.peft.named_modules():
            if isinstance(module, LoraLayer):
                lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
                with torch.no_grad():
                    lora_a.copy_(seeded_rows(seed, name, *lora_a.shape))
                    lora_b.zero_()
        if self.kind == "encoder":
            self.peft.base_model.model.head.modules_to_save["default"].reset_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's parameters (LoRA factors, and the head for encoders)."""
        return [p for p in self.parameters() if p.requires_grad]


def seeded_rows(seed: int, module_name: str, rows: int, columns: int) -> torch.Tensor:
    """Rows ``U(-1/sqrt(columns), 1/sqrt(columns))``, row ``j`` drawn from its own
    generator seeded by (seed, module name, j): independent of how many rows are asked.
    """
    bound = 1.0 / math.sqrt(columns)
    out = torch.empty(rows, columns)
    for j in range(rows):
        digest = hashlib.sha256(f"{seed}/{module_name}/{j}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        out[j].uniform_(-bound, bound, generator=generator)
    return out


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
            common = _common_prefix_length(first, tokens)
            common = min(common, shared if len(members) > 1 else len(first) - 1, len(tokens) - 1)
            if common >= min_shared:
                groups[-1] = (common, [*members, i])
                continue
        groups.append((len(tokens), [i]))
    return groups


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


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

    def drop(self, key: str) -> None:
        """Forget ``key`` if present."""
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()


PREFIX_CACHE = PrefixCache(max_bytes=4 << 30)
