"""The LLM's world knowledge as a reranking prior: does the backbone's likelihood of an
item's title improve a federated MF retriever's top 20?

A zero-shot LLM knows which titles are common (a popularity prior learned from public
text, no user data: it costs no privacy). For every catalog item the script computes the
log-likelihood of its title after a fixed context (its sum over the title's tokens, and
its mean per token), then reorders each ranking case's top 20 by the standardized
prior plus ``w`` times the standardized retriever score
(:func:`fedrec.tasks.ranking.rerank.fused_scores`). The variant and ``w`` are chosen on
selection users (every user not drawn for test), and test is measured once, paired
against the retriever alone. Every user's held-out interactions are outside the MF's
training, so every user is a valid case.

    python benchmarks/title_prior.py runs/suite-rerank/federated-mf-dp-the-retriever
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fedrec.config import FedRecConfig
from fedrec.config.presets import read_config_file
from fedrec.data.partition import sample_users
from fedrec.models.backbone import load_backbone
from fedrec.tasks.collaborative.folded import FoldedInTables
from fedrec.tasks.preference.dataset import CentralSplit, load_split
from fedrec.tasks.ranking.cases import ranking_cases
from fedrec.tasks.ranking.ranker import paired_differences, ranking_metrics
from fedrec.tasks.ranking.rerank import rerank_order

WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0)
TOP = 20
RESULTS = Path(__file__).parent / "results" / "rerank" / "title_prior"


@torch.no_grad()
def title_log_likelihoods(backbone: str, titles: list[str], context: str) -> dict[str, np.ndarray]:
    """Sum and per-token mean of each title's token log-probabilities after ``context``."""
    loaded = load_backbone(backbone)
    tokenizer, model = loaded.tokenizer, loaded.model
    start = tokenizer.encode(context, add_special_tokens=False)
    sums, means = np.zeros(len(titles)), np.zeros(len(titles))
    for first in range(0, len(titles), 64):
        ids = [start + tokenizer.encode(t, add_special_tokens=False) for t in titles[first : first + 64]]
        batch = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in ids], batch_first=True)
        mask = (torch.arange(batch.shape[1])[None] < torch.tensor([len(t) for t in ids])[:, None]).long()
        log_probs = torch.log_softmax(model(input_ids=batch, attention_mask=mask).logits.float(), -1)
        token_log_probs = log_probs[:, :-1].gather(-1, batch[:, 1:, None])[..., 0]
        for row, tokens in enumerate(ids):
            title = token_log_probs[row, len(start) - 1 : len(tokens) - 1]
            sums[first + row], means[first + row] = float(title.sum()), float(title.mean())
    return {"sum": sums, "mean": means}


def ranks(
    central: CentralSplit, cfg: FedRecConfig, users: list[str], retriever: FoldedInTables, prior: np.ndarray, w: float
) -> tuple[list[int], list[int]]:
    """The target's rank per case: the top 20 reordered by the prior fused at ``w``, and the retriever's own."""
    reranked, alone = [], []
    for case in ranking_cases(central.data, central.split, users, 99, cfg.federation.seed, "test"):
        rows = np.array([retriever.item_row[item] for item in case.candidates])
        scores = retriever.catalog_scores(case.user)[rows]
        order = rerank_order(scores, 0, TOP, lambda head, rows=rows: prior[rows[head]], w)
        reranked.append(int(np.flatnonzero(order == 0)[0]))
        alone.append(int(np.flatnonzero(rerank_order(scores, 0, 0) == 0)[0]))
    return reranked, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished mf run (its config.toml and item-tables.npz)")
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--context", default="Movie: ", help="the text before each title")
    parser.add_argument("--test-users", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = FedRecConfig.from_mapping(read_config_file(args.run / "config.toml"))
    central = load_split(cfg.data, cfg.federation.seed, 0)
    users = sorted(central.split.users)
    test = sample_users(users, args.test_users, cfg.federation.seed)
    selection = sorted(set(users) - set(test))
    catalog = central.data.items["item"]
    retriever = FoldedInTables.from_file(
        args.run / "item-tables.npz", catalog, central.split.train_interactions, cfg.data.like_threshold, users
    )
    titles = central.data.titles
    priors = title_log_likelihoods(args.backbone, [titles[item] for item in retriever.items], args.context)
    chosen = {}
    for variant, prior in priors.items():
        for w in WEIGHTS:
            metrics = ranking_metrics(ranks(central, cfg, selection, retriever, prior, w)[0])
            chosen[f"{variant}, w={w}"] = {k: metrics[k] for k in ("hr@10", "ndcg@10", "ranking_users")}
    best = max(chosen, key=lambda key: chosen[key]["ndcg@10"])
    variant, w = best.split(", w=")
    reranked, alone = ranks(central, cfg, test, retriever, priors[variant], float(w))
    kept = ("hr@10", "hr@10_se", "ndcg@10", "ndcg@10_se", "ranking_users")
    report = {
        "run": str(args.run),
        "backbone": args.backbone,
        "context": args.context,
        "selection": chosen | {"retriever": _kept(ranks(central, cfg, selection, retriever, priors["sum"], 1.0)[1])},
        "chosen": best,
        "test": {k: v for k, v in ranking_metrics(reranked).items() if k in kept},
        "test_retriever": {k: v for k, v in ranking_metrics(alone).items() if k in kept},
        "paired_difference": paired_differences(reranked, alone),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("chosen", "test", "test_retriever", "paired_difference")}, indent=2))


def _kept(case_ranks: list[int]) -> dict[str, float]:
    metrics = ranking_metrics(case_ranks)
    return {k: metrics[k] for k in ("hr@10", "ndcg@10", "ranking_users")}


if __name__ == "__main__":
    main()
