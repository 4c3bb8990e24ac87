"""Attaching a LoRA adapter (peft) to the top layers of a frozen backbone, and its
seeded initialisation.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..config import ModelConfig
from .errors import BackboneError


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

    @classmethod
    def of(cls, model: ModelConfig, freeze_a: bool, seed: int, rank: int | None = None) -> LoraSettings:
        """The LoRA of ``model``'s keys at ``rank`` (default: the global rank). A rank below
        the global one (heterogeneous ranks) keeps the global scale ``alpha / rank``, so a
        client's adapter is a slice of the global one.
        """
        global_rank = model.global_lora_rank
        rank = global_rank if rank is None else rank
        return cls(
            rank=rank,
            alpha=model.lora_alpha * rank / global_rank,
            dropout=model.lora_dropout,
            target_modules=tuple(model.lora_modules),
            top_layers=model.lora_layers,
            freeze_a=freeze_a,
            seed=seed,
        )


def split_layer_of(lora: LoraSettings, num_layers: int) -> int:
    """Index of the first layer with LoRA (0: every layer has it)."""
    if lora.top_layers > num_layers:
        raise BackboneError(f"lora-layers = {lora.top_layers} but the backbone has {num_layers} layers")
    return num_layers - lora.top_layers if lora.top_layers else 0


def attach_lora(
    base: nn.Module, lora: LoraSettings, layers_path: str, num_layers: int, save_modules: tuple[str, ...], name: str
) -> PeftModel:
    """``base`` wrapped by peft with LoRA on layers ``split_layer_of(lora)..`` (and the
    modules in ``save_modules`` trainable), seeded and, with ``freeze_a``, A frozen.
    """
    split_layer = split_layer_of(lora, num_layers)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=list(range(split_layer, num_layers)) if lora.top_layers else None,
        layers_pattern=layers_path.rsplit(".", 1)[-1] if lora.top_layers else None,
        modules_to_save=list(save_modules) or None,
    )
    torch.manual_seed(lora.seed)
    try:
        with warnings.catch_warnings():  # peft calls a method transformers renamed; nothing for a user to do
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            peft = get_peft_model(base, config)
    except ValueError as err:
        raise BackboneError(f"cannot attach LoRA to {name}: {err}") from None
    reset_lora(peft, lora.seed)
    if lora.freeze_a:
        for param_name, param in peft.named_parameters():
            if "lora_A" in param_name:
                param.requires_grad_(False)
    return peft


def reset_lora(peft: PeftModel, seed: int) -> None:
    """Re-initialise every LoRA layer from ``seed``: B zero, and A with peft's
    distribution U(-1/sqrt(in), 1/sqrt(in)) drawn row by row from (seed, module, row),
    so that every rank's A is a slice of a larger rank's (FFA-LoRA with heterogeneous
    ranks) and the same on every machine.
    """
    torch.manual_seed(seed)
    for name, module in peft.named_modules():
        if isinstance(module, LoraLayer):
            lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
            with torch.no_grad():
                lora_a.copy_(seeded_rows(seed, name, *lora_a.shape))
                lora_b.zero_()


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
