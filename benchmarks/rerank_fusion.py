"""Late fusion of a finished retrieve-then-rerank run: weighted on other users, measured on test once.

A ``rerank-top`` run leaves its adapter (``adapter/``) beside its ``config.toml``. This
script loads that adapter, scores each ranking case's reranked head once, and orders the
head by the LLM's score plus ``w`` times the retriever's (each standardized over the head,
:func:`fedrec.tasks.ranking.rerank.fused_scores`) for every ``w`` of a grid:

* selection: as many users as the run evaluated (``--selection-users``), drawn (seeded)
  from the others; their held-out test interactions were never trained on (every
  user's are held out), and the test users are not among them. ``w`` is the one with the
  best NDCG@10 there;
* test: the run's own ranking cases, or (``--test-users N``) those of N users drawn with
  the run's seed, measured once at that ``w`` (``w`` = 0 on the run's own cases
  reproduces its final reranked metrics), with paired differences against the retriever
  alone and against the LLM's own order of the head, and the LLM's own order against the
  retriever.

The fusion costs no privacy: it post-processes the run's and the retriever's releases.

    python benchmarks/rerank_fusion.py runs/suite-rerank/llm-hybrid-ranking-loss-reranks-the-top-20 [--out DIR]
    python benchmarks/rerank_fusion.py RUN --test-users 340 --selection-users 100   # about 300 ranked test users

``fusion.json`` keeps each test case's rank (the LLM's order, the fused one, the
retriever's), so that two runs measured on the same users compare paired:
``--against OTHER/fusion.json`` adds the LLM orders' paired difference (this run minus that).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedrec.config import FedRecConfig
from fedrec.config.presets import read_config_file
from fedrec.data.partition import sample_users
from fedrec.models.adapter import load_adapter_folder
from fedrec.models.scorer import Scorer
from fedrec.server.models import central_split, llm_ranker
from fedrec.tasks.preference.dataset import CentralSplit
from fedrec.tasks.preference.scoring import scorer_for
from fedrec.tasks.ranking.cases import ranking_cases
from fedrec.tasks.ranking.ranker import paired_differences
from fedrec.tasks.ranking.rerank import RETRIEVER, RerankEvaluation

FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
KEPT = ("hr@10", "hr@10_se", "ndcg@10", "ndcg@10_se", "recall@20", "coverage@10", "ranking_users")


def evaluation(cfg: FedRecConfig, central: CentralSplit, scorer: Scorer) -> RerankEvaluation:
    """The run's rerank evaluation of ``central``'s users, with ``scorer`` (the run's adapter loaded)."""
    negatives, seed = cfg.evaluation.ranking_negatives, cfg.federation.seed
    cases = ranking_cases(central.data, central.split, central.eval_users, negatives, seed, "test")
    ranker, _ = llm_ranker(cfg, scorer, central, cases[: cfg.evaluation.ranking_users])
    if not isinstance(ranker, RerankEvaluation):
        raise SystemExit("the run does not rerank a retriever: set rerank-top and item-tables")
    return ranker


def kept(metrics: dict[str, Any]) -> dict[str, Any]:
    """The reranked list's and the retriever's reported metrics."""
    return {k: metrics[k] for k in KEPT if k in metrics} | {
        RETRIEVER + k: metrics[RETRIEVER + k] for k in KEPT if RETRIEVER + k in metrics
    }


def against(report: dict[str, Any], other_path: Path) -> dict[str, float]:
    """The LLM order's paired difference from another run's on the same test cases."""
    other = json.loads(other_path.read_text())
    mine, theirs = report["test_ranks"], other.get("test_ranks")
    if theirs is None or theirs["retriever"] != mine["retriever"]:
        raise SystemExit(f"{other_path} was not measured on the same test cases (or before ranks were kept)")
    return paired_differences(mine["llm order"], theirs["llm order"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run with rerank-top > 0 and its adapter/")
    parser.add_argument("--out", type=Path, help="where fusion.json goes (default: the run's folder)")
    parser.add_argument("--test-users", type=int, default=0, help="test on this many users (default: the run's)")
    parser.add_argument("--selection-users", type=int, default=0, help="default: as many as the test users")
    parser.add_argument("--against", type=Path, help="another run's fusion.json on the same test users")
    args = parser.parse_args()
    cfg = FedRecConfig.from_mapping(read_config_file(args.run / "config.toml"))
    if args.test_users:
        cfg = cfg.replace(eval_users=args.test_users, ranking_users=args.test_users)
    test_split, _ = central_split(cfg)
    others = sorted(set(test_split.split.users) - set(test_split.eval_users))
    chosen = sample_users(others, args.selection_users or len(test_split.eval_users), cfg.federation.seed + 1)
    selection_split = replace(test_split, eval_users=chosen)
    scorer = scorer_for(cfg)  # the backbone and the adapter, loaded once for both user sets
    load_adapter_folder(scorer, args.run / "adapter")
    selection = evaluation(cfg, selection_split, scorer).metrics_by_weight(FUSION_WEIGHTS)
    weight = max(FUSION_WEIGHTS, key=lambda w: selection[w]["ndcg@10"])
    test = evaluation(cfg, test_split, scorer).metrics_by_weight(sorted({0.0, weight}))
    fused, llm_only = test[weight], test[0.0]
    final = json.loads((args.run / "summary.json").read_text())["metrics"]
    report = {
        "run": str(args.run),
        "weight": weight,
        "test": kept(fused),
        "test_llm_order": kept(llm_only),
        "run_final_reranked": {k: final.get(k) for k in ("hr@10", "ndcg@10")},
        "paired_differences": {
            "retriever": paired_differences(fused["ranks"], fused[RETRIEVER + "ranks"]),
            "llm order": paired_differences(fused["ranks"], llm_only["ranks"]),
            "llm order minus the retriever": paired_differences(llm_only["ranks"], llm_only[RETRIEVER + "ranks"]),
        },
        "selection": {str(w): kept(m) for w, m in selection.items()},
        "selection_users": len(chosen),
        "test_ranks": {
            "llm order": llm_only["ranks"],
            "fused": fused["ranks"],
            "retriever": fused[RETRIEVER + "ranks"],
        },
    }
    if args.against:
        report["paired_differences"]["llm order minus the other run's"] = against(report, args.against)
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("weight", "test", "run_final_reranked", "paired_differences")}, indent=2))


if __name__ == "__main__":
    main()
