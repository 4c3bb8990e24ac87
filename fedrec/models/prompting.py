"""Wrapping prompt text for a backbone: its chat template (or a plain cue), truncation
to ``max_length``, and the token ids of a two-way answer. What is asked and which
answers are compared is the task's (:class:`AnswerPrompt`); this module only knows how
a tokenizer frames them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .errors import BackboneError

_CONTENT_MARKER = "\u0001CONTENT\u0001"


@dataclass(frozen=True)
class AnswerPrompt:
    """How a task asks a causal LM a two-way question: the system message of a chat
    template, the cue after the content for tokenizers without one, and the two answers
    whose next-token logits are compared (positive first). ``signal_slots`` (for
    collaborative soft tokens, see :mod:`.soft_tokens`) are texts placed after the content,
    one per soft token, whose last token carries it.
    """

    system: str
    plain_cue: str
    answers: tuple[str, str]
    signal_slots: tuple[str, ...] = ()


class PromptFormat:
    """Token ids around a prompt's content and, for causal LMs, the first token id of
    each answer (the answer turn of a chat template starts without a leading space).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, kind: str, question: AnswerPrompt, name: str) -> None:
        self.tokenizer = tokenizer
        self.answer_ids: torch.Tensor | None = None
        self.slot_ids: list[list[int]] = []
        if kind == "encoder":
            if question.signal_slots:
                raise BackboneError(f"{name}: collaborative soft tokens need a causal LM (slots at fixed offsets)")
            special = tokenizer("")["input_ids"]
            self.head_ids, self.tail_ids = special[:1], special[1:]
            return
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "system", "content": question.system}, {"role": "user", "content": _CONTENT_MARKER}],
                tokenize=False,
                add_generation_prompt=True,
            )
            before, after = text.split(_CONTENT_MARKER)
            answer_prefix = ""
            bos: list[int] = []
        else:
            before, after, answer_prefix = "", question.plain_cue, " "
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.head_ids = bos + tokenizer.encode(before, add_special_tokens=False)
        self.tail_ids = tokenizer.encode(after, add_special_tokens=False)
        self.slot_ids = [tokenizer.encode(slot, add_special_tokens=False) for slot in question.signal_slots]
        positive, negative = (tokenizer.encode(answer_prefix + a, add_special_tokens=False) for a in question.answers)
        if positive[0] == negative[0]:
            raise BackboneError(f"{name}: {question.answers[0]!r} and {question.answers[1]!r} share their first token")
        self.answer_ids = torch.tensor([positive[0], negative[0]])

    def encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids of each prompt inside the template, truncated to ``max_length`` by
        dropping the oldest part of the content.
        """
        slots = [token for ids in self.slot_ids for token in ids]
        budget = max_length - len(self.head_ids) - len(slots) - len(self.tail_ids)
        if budget <= 8:
            raise BackboneError(f"max-length {max_length} leaves no room for the prompt")
        contents = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [self.head_ids + ids[-budget:] + slots + self.tail_ids for ids in contents]

    @property
    def slot_offsets(self) -> tuple[int, ...]:
        """Each signal slot's carrying token, counted from the prompt's end (1: the last token)."""
        offsets, after = [], len(self.tail_ids)
        for ids in reversed(self.slot_ids):
            offsets.append(after + 1)
            after += len(ids)
        return tuple(reversed(offsets))
