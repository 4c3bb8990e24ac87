"""Models: frozen backbones, LoRA adapters, scoring."""
