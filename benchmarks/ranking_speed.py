"""Ranking evaluation speed: candidate scoring after a shared history vs the naive loop.

For each of a few MovieLens-100K ranking cases (held-out liked item + 99 unrated
items, the demo's prompt: 6 history titles, SmolLM2 chat template), the candidates
are scored (1) by the naive loop, one full forward per candidate prompt; (2) by a first
``Scorer.score_candidates``: the shared history once, then the candidate suffixes in
batches on copies of its key/value cache, keeping the frozen layers' states; (3) by the
same call again, as a later evaluation round makes it: only the layers above the split,
on rows of candidates packed after the history (``fedrec.models.packing``). All in
float32 with LoRA (B non-zero) on the top 2 layers, in one process, alternating per
case; the report gives each method's seconds per user, its speed-up over the naive loop
and its largest score difference from it.

    python benchmarks/ranking_speed.py                  # smollm2, 5 users
    python benchmarks/ranking_speed.py --backbone tiny-llama --users 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fedrec.config import resolve_config
from fedrec.models.backbone import load_backbone
from fedrec.models.lora import LoraSettings
from fedrec.models.scorer import Scorer
from fedrec.models.split_check import full_forward_score
from fedrec.tasks.preference.dataset import load_split
from fedrec.tasks.preference.prompt import PREFERENCE_QUESTION
from fedrec.tasks.ranking.cases import ranking_cases

RESULTS = Path(__file__).parent / "results"
METHODS = ("naive", "first call", "repeated call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--out", default=str(RESULTS / "ranking_speed.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = resolve_config("demo")
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    # one more case than timed: the first warms up the device (kernels, allocator) untimed
    cases = ranking_cases(central.data, central.split, central.eval_users, 99, cfg.federation.seed)[: args.users + 1]
    modules = ("query", "value") if args.backbone in ("tiny-bert", "minilm") else ("q_proj", "v_proj")
    scorer = Scorer(
        load_backbone(args.backbone),
        LoraSettings(rank=2, alpha=4.0, target_modules=modules, top_layers=2),
        PREFERENCE_QUESTION,
        compute_dtype=getattr(torch, args.compute_dtype),
    )
    with torch.no_grad():
        for name, param in scorer.peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.05)
    if torch.cuda.is_available():
        scorer.to("cuda")
    seconds = dict.fromkeys(METHODS, 0.0)
    max_diff, tokens_per_prompt = dict.fromkeys(METHODS[1:], 0.0), []
    for index, case in enumerate(cases):
        tokens = scorer.encode(central.prompts(case.examples()))
        tokens_per_prompt += [len(t) for t in tokens] if index else []
        scores = {}
        for method in METHODS:
            started = time.perf_counter()
            if method == "naive":
                scores[method] = torch.tensor([full_forward_score(scorer, t) for t in tokens])
            else:
                scores[method] = scorer.score_candidates(tokens, batch_size=args.batch_size).cpu()
            seconds[method] += (time.perf_counter() - started) if index else 0.0
        for method in METHODS[1:]:
            max_diff[method] = max(max_diff[method], float((scores[method] - scores["naive"]).abs().max()))
    result = {
        "backbone": args.backbone,
        "compute_dtype": args.compute_dtype,
        "users": len(cases) - 1,
        "candidates_per_user": 100,
        "mean_prompt_tokens": sum(tokens_per_prompt) / len(tokens_per_prompt),
        "seconds_per_user": {method: value / (len(cases) - 1) for method, value in seconds.items()},
        "speedup_over_naive": {method: seconds["naive"] / seconds[method] for method in METHODS[1:]},
        "max_abs_score_difference": max_diff,
        "machine": platform.machine()
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
