"""Packed ranking groups against separate prompts: one DP-SGD pass of a client's ranking
groups, both ways, side by side in one process.

A ranking group (a history, its liked item and ``train-negatives`` unrated items) is one
record. Separately, its G prompts run above the split layer as G padded rows; packed
(:mod:`fedrec.models.packing`), as one row holding the shared history once. The script
takes a run config with ``objective = "ranking"`` (for ``llm-input = "hybrid"`` its
``item-tables`` must exist), builds the first ``--groups`` groups of client 0, computes
their frozen-prefix states once (not timed), then times ``--repeats`` alternating DP-SGD
passes of each way from the same adapter and seed, and writes the times, their ratio and
the row tokens to ``--out``/report.json.

    python benchmarks/packed_groups.py benchmarks/results/rerank/llm-hybrid-ranking-loss-reranks-the-top-20/config.toml
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedrec.config import FedRecConfig
from fedrec.config.presets import read_config_file
from fedrec.models.adapter import adapter_to_arrays, load_adapter_arrays
from fedrec.models.packing import group_prefix_lengths
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import PrivateTraining, plan_round
from fedrec.tasks.preference.dataset import load_federated_data
from fedrec.tasks.preference.scoring import scorer_for
from fedrec.tasks.preference.signals import node_signals
from fedrec.tasks.ranking.training import ranking_groups, ranking_loss
from fedrec.tasks.training import LocalTraining, train_adapter

RESULTS = Path(__file__).parent / "results" / "packed_groups"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a run config with objective = 'ranking'")
    parser.add_argument("--groups", type=int, default=120, help="ranking groups of client 0 to train on")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of each way")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cfg = FedRecConfig.from_mapping(read_config_file(args.config))
    if cfg.training.objective != "ranking":
        raise SystemExit(f"{args.config}: objective must be 'ranking'")
    torch.set_num_threads(max(1, int(cfg.federation.client_cpus)))
    data = load_federated_data(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users, cfg.federation.num_clients)
    catalog = data.central.data.items["item"].astype(str).tolist()
    size = 1 + cfg.training.train_negatives
    groups = ranking_groups(data.train_examples(0), data.train_interactions(0), catalog, size - 1, cfg.federation.seed)
    rows = [ex for group in groups[: args.groups] for ex in group]
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    tokens = scorer.encode(data.prompts(rows))
    states = scorer.prefix_states(tokens)
    collaborative = node_signals(cfg, data, 0)
    signals = None if collaborative is None else collaborative.of(rows)
    shared = group_prefix_lengths(tokens, size)
    start = adapter_to_arrays(scorer)
    local = LocalTraining(cfg.training, ranking_loss, cfg.federation.seed, group_size=size)
    count = len(rows) // size
    plan = plan_round(cfg.record_dp, max(1, cfg.federation.num_server_rounds), count, cfg.training.batch_size, 1)
    times: dict[str, list[float]] = {"separate": [], "packed": []}
    losses: dict[str, float] = {}
    for _ in range(args.repeats):
        for way, lengths in (("separate", None), ("packed", shared)):
            load_adapter_arrays(scorer, start, "start")
            private = PrivateTraining(plan, cfg.record_dp.max_grad_norm, PersistentAccountant(cfg.record_dp.accountant))
            began = time.perf_counter()
            result = train_adapter(scorer, states, torch.zeros(count), local, private, signals, lengths)
            times[way].append(time.perf_counter() - began)
            losses[way] = result.loss
    assert shared is not None
    separate_tokens = sum(len(t) for t in tokens)
    packed_tokens = sum(n + sum(len(t) - n for t in tokens[g * size : (g + 1) * size]) for g, n in enumerate(shared))
    report = {
        "config": str(args.config),
        "llm_input": cfg.model.llm_input,
        "groups": count,
        "group_size": size,
        "threads": torch.get_num_threads(),
        "seconds": times,
        "packed_over_separate": min(times["packed"]) / min(times["separate"]),
        "tokens": {"separate": separate_tokens, "packed": packed_tokens},
        "mean_loss": losses,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"report-{cfg.model.llm_input}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
