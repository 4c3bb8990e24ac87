"""Where non-finite values enter a `full`-preset client's training on a GPU.

The GPU check (benchmarks/gpu_full_check.sh) saw 5 of 20 clients' adapters hold
non-finite values each round. For each client's examples, as a client builds them, this
computes the frozen prefix states (the client's own call) and counts non-finite ones, then
runs the trainable layers forward and backward over physical batches (plain autograd, no
DP) and counts batches with non-finite scores or LoRA gradients, with the prompt lengths
of each bad batch (how much left padding it holds).

    python benchmarks/gpu_nan_probe.py --backbone FOLDER --seconds 200 --out probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedrec.config import resolve_config
from fedrec.tasks.preference.dataset import load_federated_data
from fedrec.tasks.preference.scoring import preference_loss, scorer_for


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def _batch_checks(scorer, states: list[torch.Tensor], labels: torch.Tensor, size: int) -> list[dict]:
    """Forward and backward of each physical batch; the batches with non-finite values."""
    bad = []
    lora = list(scorer.trainable_parameters())
    for start in range(0, len(states), size):
        rows = list(range(start, min(start + size, len(states))))
        batch, mask = scorer.batch([states[i] for i in rows])
        scores = scorer(batch, mask, None)
        loss = preference_loss(scores, labels[rows].to(scores.device))
        grads = torch.autograd.grad(loss, lora, allow_unused=True)
        finite_grads = all(g is None or _finite(g) for g in grads)
        if not (_finite(scores) and finite_grads):
            lengths = [int(states[i].shape[0]) for i in rows]
            bad.append(
                {
                    "start": start,
                    "nonfinite_scores": [rows[i] for i in torch.nonzero(~torch.isfinite(scores)).flatten().tolist()],
                    "finite_grads": finite_grads,
                    "min_length": min(lengths),
                    "max_length": max(lengths),
                }
            )
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    overrides = {"backbone": args.backbone} | ({"lora-layers": 0} if args.backbone.startswith("tiny") else {})
    cfg = resolve_config("full", overrides=overrides)
    scorer = scorer_for(cfg)
    scorer.train()
    data = load_federated_data(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, cfg.federation.num_clients)
    report: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "clients": []}
    for partition in range(cfg.federation.num_clients):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        examples = data.train_examples(partition)
        tokens = scorer.encode(data.prompts(examples))
        states = scorer.prefix_states(tokens)
        bad_states = [i for i, s in enumerate(states) if not _finite(s)]
        labels = torch.tensor([float(ex.label) for ex in examples])
        bad_batches = _batch_checks(scorer, states, labels, cfg.training.physical_batch_size)
        entry = {
            "partition": partition,
            "examples": len(states),
            "nonfinite_states": len(bad_states),
            "bad_state_lengths": [len(tokens[i]) for i in bad_states[:10]],
            "bad_batches": bad_batches[:5],
            "bad_batch_count": len(bad_batches),
            "seconds": time.perf_counter() - started,
        }
        report["clients"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "bad_batches"}), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
