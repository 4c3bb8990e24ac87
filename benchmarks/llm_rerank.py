"""The LLM as a reranker of federated MF, text-only and with collaborative soft tokens,
trained on preferences or to rank, beside its retriever and the baselines, on one split.

One command runs, on MovieLens-100K with the demo's settings (SmolLM2-135M, FFA-LoRA on
the top 2 layers, 2 clients, SecAgg+, record-level DP-SGD at epsilon 8 per client):

1. federated MF with DP (``recommender = 'mf'``, epsilon 8): the retriever, and the item
   tables the hybrid LLM reads;
2. each LLM variant (``rerank-top`` 20: the MF orders each user's 100 sampled candidates
   and unrated catalog, the LLM reorders its top 20), with the same seed, split, users
   and cases. Each run reports the reranked list and the retriever alone on the same
   cases, so the LLM's added value is a paired difference; round 0 is the zero-shot LLM.

Privacy: an MF run and an LLM run on the same clients compose (basic composition: a
hybrid run's ``epsilon.composed`` adds the two); a text-only reranker reads the tables
at ranking time only, so its recommendations compose the same way.

    python benchmarks/llm_rerank.py [--variants 0,1] [--fresh-retriever] [--report-only]

The retriever runs only when its tables are not there yet (or with ``--fresh-retriever``):
its DP noise is not seeded, so a later variant must read the same tables as the earlier
ones to share their retriever.

Results: benchmarks/results/llm_rerank/ (report.md, each run's summary.json,
rounds.jsonl, config.toml); whole run folders under runs/benchmark-llm-rerank/.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path
from typing import Any

from federated_mf import metric_row, paired_cell

from fedrec.config import resolve_config
from fedrec.simulation.runner import simulate

RESULTS = Path(__file__).parent / "results" / "llm_rerank"
RUNS = Path("runs") / "benchmark-llm-rerank"
# 100 evaluation users (5 held-out interactions each; those whose last one is a like are
# ranked): an LLM ranking evaluation of 300 users took over 30 minutes of this 2-core CPU.
SPLIT = {"eval-users": 100, "test-interactions": 5, "ranking-users": 100, "max-weight": 100_000.0}
RETRIEVER = {"recommender": "mf", "strategy": "fedavg", "num-server-rounds": 10, "client-cpus": 1.0}
RERANK = {"rerank-top": 20}
NONE = "| - | - |"  # the bytes and seconds cells of a row without them
VARIANTS = {
    "LLM text, preference loss": {"llm-input": "text", "objective": "preference"},
    "LLM hybrid, ranking loss": {"llm-input": "hybrid", "objective": "ranking"},
    "LLM text, ranking loss": {"llm-input": "text", "objective": "ranking"},
    "LLM hybrid, preference loss": {"llm-input": "hybrid", "objective": "preference"},
}


def _privacy(summary: dict[str, Any]) -> str:
    composed = summary["epsilon"].get("composed")
    text = f"ε {summary['epsilon']['max']:.2f}"
    if composed:
        text += f" (+ tables: ε {composed['max']:.2f}, δ {composed['delta']:g})"
    return text


def _rows(retriever: dict[str, Any], llms: dict[str, dict[str, Any]]) -> list[str]:
    """The retriever, each LLM variant (zero-shot and trained) and the baselines."""
    rows = [metric_row("federated MF, DP (the retriever)", _privacy(retriever), retriever["metrics"], NONE)]
    for name, (summary, initial) in llms.items():
        extra = f"| {summary['bytes']['up'] / summary['rounds'] / 2:,.0f} | {summary['seconds']:.0f} |"
        rows.append(metric_row(f"{name}: zero-shot rerank", "-", initial, NONE))
        rows.append(metric_row(f"{name}: trained rerank", _privacy(summary), summary["metrics"], extra))
    ranking, preference = retriever.get("ranking_baselines", {}), retriever.get("baselines", {})
    for name in sorted(set(ranking) | set(preference)):
        rows.append(metric_row(name, "none (central data)", ranking.get(name, {}) | preference.get(name, {}), NONE))
    return rows


def report(retriever: dict[str, Any], llms: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """The markdown report of the runs."""
    lines = [
        f"# The LLM reranking federated MF (2 clients, SecAgg+, DP ε 8 per run), {platform.machine()} CPU",
        "",
        "| model | privacy | HR@10 | NDCG@10 | Recall@20 | coverage@10 | AUC | UAUC | bytes up / client-round "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *_rows(retriever, llms),
        "",
        "Paired differences on the same cases, trained reranker minus its retriever and minus most-popular:",
        "",
        "| model | HR@10 − retriever | NDCG@10 − retriever | NDCG@10 − most-popular | NDCG@10 − federated-mf |",
        "|---|---|---|---|---|",
    ]
    for name, (summary, _) in llms.items():
        paired = summary.get("paired_differences", {})
        cells = [paired_cell(paired.get("retriever", {}), "hr@10"), paired_cell(paired.get("retriever", {}), "ndcg@10")]
        cells += [paired_cell(paired.get(b, {}), "ndcg@10") for b in ("most-popular", "federated-mf")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    users = retriever["metrics"].get("ranking_users")
    lines += [
        "",
        f"Ranking: {users} users, the last held-out liked item among {retriever.get('ranking_candidates')} "
        "candidates (HR@10, NDCG@10) and among every item the user did not rate (Recall@20, coverage@10), the "
        "LLM reordering the retriever's top 20 of each list; preference (AUC, UAUC): "
        f"{retriever['eval_examples']} held-out interactions (5 per user), scored by each model itself. "
        "± is one standard error.",
    ]
    return "\n".join(lines) + "\n"


def _run(name: str, overrides: dict[str, Any], folder: str) -> dict[str, Any]:
    out = RUNS / folder
    shutil.rmtree(out, ignore_errors=True)
    cfg = resolve_config("demo", overrides=SPLIT | overrides | {"out": str(out)})
    _, summary = simulate(cfg, echo=None)
    kept = RESULTS / folder
    kept.mkdir(parents=True, exist_ok=True)
    for file in ("summary.json", "rounds.jsonl", "config.toml"):
        shutil.copy(out / file, kept / file)
    shown = {k: v for k, v in summary["metrics"].items() if not k.endswith("ranks")}
    print(f"{name}: {json.dumps(shown)} ({summary['seconds']:.0f} s)", flush=True)
    return summary


def _initial(folder: str) -> dict[str, Any]:
    """Round 0's metrics (the zero-shot LLM) from a kept rounds.jsonl."""
    return json.loads((RESULTS / folder / "rounds.jsonl").read_text().splitlines()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(str(n) for n in range(len(VARIANTS))))
    parser.add_argument("--fresh-retriever", action="store_true", help="run the retriever again (new DP noise)")
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from the kept results")
    args = parser.parse_args()
    chosen = [int(n) for n in args.variants.split(",") if n.strip()]
    tables = (RUNS / "retriever" / "item-tables.npz").resolve()
    if args.report_only or (tables.exists() and not args.fresh_retriever):
        retriever = json.loads((RESULTS / "retriever" / "summary.json").read_text())
    else:
        retriever = _run("federated MF, DP", RETRIEVER, "retriever")
    llms = {}
    for n, (name, overrides) in enumerate(VARIANTS.items()):
        folder = f"variant-{n}"
        if n in chosen and not args.report_only:
            _run(name, overrides | RERANK | {"item-tables": str(tables)}, folder)
        if (RESULTS / folder / "summary.json").exists():
            llms[name] = (json.loads((RESULTS / folder / "summary.json").read_text()), _initial(folder))
    (RESULTS / "report.md").write_text(report(retriever, llms))
    print((RESULTS / "report.md").read_text())


if __name__ == "__main__":
    main()
