"""Write a model folder with a causal LM's architecture and tokenizer and seeded random
weights: its "shape twin".

Timings depend on shapes, not on weight values, so the twin times a model whose weights
cannot travel (the device tool carries at most 64 MiB; SmolLM2-135M is 538 MB in float32).
Its scores mean nothing: accuracy needs the real weights.

    python benchmarks/shape_twin.py ~/.cache/fedrec/smollm2-135m-instruct-q4_1 /tmp/smollm2-twin
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def write_twin(source: Path, target: Path, seed: int = 0) -> None:
    """``target`` gets ``source``'s config and tokenizer and random weights of that shape."""
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder with config.json and the tokenizer's files")
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    write_twin(args.source, args.target)
    print(f"shape twin of {args.source} written to {args.target}")


if __name__ == "__main__":
    main()
