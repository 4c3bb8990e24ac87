"""What training touches in a scorer, found once (which parameters train never changes
after the adapter is attached): the modules training mode reaches, the trainable
parameters, and the top-most modules holding them, what DP-SGD hooks. Per-round code
then never walks the frozen backbone.
"""

from __future__ import annotations

from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn


class TrainableParts:
    """The trainable parts of ``model``, whose adapter is ``peft``."""

    def __init__(self, model: nn.Module, peft: PeftModel) -> None:
        self.mode_modules = adapter_train_modules(peft)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.modules = topmost_trainable(model)

    def set_mode(self, training: bool) -> None:
        """Training (or evaluation) mode for the adapter's modules only."""
        for module in self.mode_modules:
            module.training = training


def adapter_train_modules(peft: PeftModel) -> list[nn.Module]:
    """The modules that training mode reaches: the adapter's (its LoRA dropout and the
    modules holding trainable parameters), found once; the frozen backbone always runs
    as in evaluation, so cached states stay valid. Leaves ``peft`` in evaluation mode.
    """
    peft.train(False)
    for module in peft.modules():
        if isinstance(module, LoraLayer):
            module.lora_dropout.train()
        elif any(p.requires_grad for p in module.parameters(recurse=False)):
            module.train()
    found = [module for module in peft.modules() if module.training]
    peft.train(False)
    return found


def topmost_trainable(module: nn.Module) -> list[nn.Module]:
    """The submodules holding trainable parameters directly, none inside another: given
    them in one container, Opacus hooks the same modules as when given ``module``.
    """
    if any(p.requires_grad for p in module.parameters(recurse=False)):
        return [module]
    return [found for child in module.children() for found in topmost_trainable(child)]
