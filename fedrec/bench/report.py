"""A suite's results: one row per point, the Markdown report and the plots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..tasks.ranking.ranker import paired_differences
from .suites import Point

_RANKING_KEYS = ("hr@10", "hr@10_se", "ndcg@10", "ndcg@10_se", "recall@20", "coverage@10")


def row(point: Point, folder: Path) -> dict[str, Any]:
    """One point's row, from its run folder."""
    summary = json.loads((folder / "summary.json").read_text())
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    # a model fitted in one exchange before round 1 (ease) has only round 0: its exchange counts as one
    client_rounds = sum(r["clients_sampled"] for r in (rounds[1:] or rounds))
    client_dp = summary.get("client_dp")
    final, initial = summary["metrics"], summary["initial_metrics"]
    composed = summary["epsilon"].get("composed")
    return {
        "method": point.label,
        "folder": folder.name,
        "overrides": dict(point.overrides),
        "recommender": summary.get("recommender", "llm"),
        "auc": final["auc"],
        "initial_auc": initial["auc"],
        **{key: final.get(key) for key in ("auc_se", "uauc", "uauc_se", *_RANKING_KEYS)},
        **{f"initial_{key}": initial.get(key) for key in ("hr@10", "ndcg@10")},
        **{f"retriever_{key}": final.get(f"retriever_{key}") for key in _RANKING_KEYS},
        "minus_retriever": summary.get("paired_differences", {}).get("retriever"),
        "ranks": final.get("ranks"),
        "epsilon": summary["epsilon"]["max"] if summary["dp"] else None,
        "composed_epsilon": composed["max"] if composed else None,
        "client_epsilon": client_dp["epsilon"] if client_dp else None,
        "bytes_up_per_client_round": summary["bytes"]["up"] / client_rounds if client_rounds else 0,
        "bytes_total": summary["bytes"]["total"],
        "adapter_to_full_model": summary["bytes"].get("adapter_to_full_model"),
        "seconds": summary["seconds"],
        "auc_by_round": [r.get("auc") for r in rounds],
        "bytes_up_by_round": [r["bytes_up"] for r in rounds],
        "baselines": summary["baselines"],
        "ranking_baselines": summary.get("ranking_baselines", {}),
        "ranking_users": final.get("ranking_users"),
        "ranking_candidates": summary.get("ranking_candidates"),
    }


def _cell(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _estimate(metrics: Mapping[str, Any], key: str, spec: str) -> str:
    """``value ± se`` (``-`` when undefined)."""
    value, se = metrics.get(key), metrics.get(f"{key}_se")
    return "-" if value is None else format(value, spec) + ("" if se is None else f" ± {format(se, spec)}")


def main_table(rows: list[Mapping[str, Any]]) -> str:
    """The main table, in Markdown."""
    lines = [
        "| method | AUC | UAUC | round-0 AUC | HR@10 | NDCG@10 | Recall@20 | coverage@10 | record-level ε "
        "| client-level ε | bytes up / client-round | bytes total | adapter / backbone | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_estimate(r, 'auc', '.4f')} | {_estimate(r, 'uauc', '.4f')} "
            f"| {r['initial_auc']:.4f} | {_estimate(r, 'hr@10', '.3f')} | {_estimate(r, 'ndcg@10', '.3f')} "
            f"| {_cell(r['recall@20'], '.3f')} | {_cell(r['coverage@10'], '.3f')} | {_cell(r['epsilon'], '.2f', '∞')} "
            f"| {_cell(r['client_epsilon'], '.2f', '∞')} | {r['bytes_up_per_client_round']:,.0f} "
            f"| {r['bytes_total']:,} | {_cell(r['adapter_to_full_model'], '.4%')} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def rerank_table(rows: list[Mapping[str, Any]]) -> str:
    """Retrieve-then-rerank rows: each reranker beside its retriever on the same cases."""
    lines = [
        "| method | HR@10 | NDCG@10 | Recall@20 | coverage@10 | round-0 HR@10 / NDCG@10 | retriever HR@10 "
        "| retriever NDCG@10 | NDCG@10 − retriever (paired) | ε composed with the tables |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["retriever_hr@10"] is None:
            continue
        paired = r["minus_retriever"] or {}
        difference = "-" if not paired else f"{paired['ndcg@10_diff']:+.3f} ± {paired['ndcg@10_diff_se']:.3f}"
        lines.append(
            f"| {r['method']} | {_estimate(r, 'hr@10', '.3f')} | {_estimate(r, 'ndcg@10', '.3f')} "
            f"| {_cell(r['recall@20'], '.3f')} | {_cell(r['coverage@10'], '.3f')} "
            f"| {_cell(r['initial_hr@10'], '.3f')} / {_cell(r['initial_ndcg@10'], '.3f')} "
            f"| {_estimate(r, 'retriever_hr@10', '.3f')} | {_estimate(r, 'retriever_ndcg@10', '.3f')} "
            f"| {difference} | {_cell(r['composed_epsilon'], '.2f')} |"
        )
    return "\n".join(lines)


def paired_table(rows: list[Mapping[str, Any]]) -> str:
    """Paired NDCG@10 and HR@10 differences between every two rerankers (later row minus
    earlier) on the same ranking cases; empty with fewer than two.
    """
    rerankers = [r for r in rows if r["retriever_hr@10"] is not None and r.get("ranks")]
    lines = ["| row minus row (paired, same cases) | NDCG@10 | HR@10 |", "|---|---|---|"]
    for i, earlier in enumerate(rerankers):
        for later in rerankers[i + 1 :]:
            if len(later["ranks"]) != len(earlier["ranks"]):
                continue
            d = paired_differences(later["ranks"], earlier["ranks"])
            lines.append(
                f"| {later['method']} − {earlier['method']} | {d['ndcg@10_diff']:+.3f} ± {d['ndcg@10_diff_se']:.3f} "
                f"| {d['hr@10_diff']:+.3f} ± {d['hr@10_diff_se']:.3f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md``: the main table, the baselines on the same split, plots and runs."""
    rows = results["rows"]
    candidates = {r["ranking_candidates"] for r in rows if r.get("ranking_candidates")}
    negatives = " / ".join(str(c - 1) for c in sorted(candidates)) or "no"
    lines = [
        f"# fedrec benchmark: {results['suite']}",
        "",
        f"{results['description']}; machine {results['machine']}. Every row is evaluated on the same held-out "
        "interactions (AUC pooled over users; UAUC: the mean of each user's AUC over users with both classes "
        f"held out) and ranking cases (HR@10, NDCG@10: the held-out liked item among {negatives} unrated ones), ± one "
        "standard error; "
        "epsilon at delta 1e-5 (record-level: Opacus per client, max over clients; client-level: the server's "
        "RDP accountant); ∞ = no DP of that kind.",
        "",
        main_table(rows),
        "",
        f"Run time: {sum(r['seconds'] for r in rows) / 60:.1f} min, the points' own times added.",
        "",
    ]
    if any(r["retriever_hr@10"] is not None for r in rows):
        lines += [
            "Retrieve, then rerank: the LLM reorders its retriever's top N of each ranking list (HR@10, NDCG@10 "
            "over the sampled candidates; Recall@20, coverage@10 over the whole unrated catalog); the retriever "
            "alone on the same cases, and the paired difference:",
            "",
            rerank_table(rows),
            "",
        ]
        if pairs := paired_table(rows):
            lines += ["Between the rerankers:", "", pairs, ""]
    if rows:
        lines += [
            "| preference baseline (no training, no privacy cost) | AUC | UAUC |",
            "|---|---|---|",
            *(
                f"| {name} | {_estimate(m, 'auc', '.4f')} | {_estimate(m, 'uauc', '.4f')} |"
                for name, m in rows[0]["baselines"].items()
            ),
            "",
        ]
        if rows[0]["ranking_baselines"]:
            lines += ["| ranking baseline | HR@10 | NDCG@10 | Recall@20 | coverage@10 |", "|---|---|---|---|---|"]
            lines += [
                f"| {name} | {_estimate(m, 'hr@10', '.3f')} | {_estimate(m, 'ndcg@10', '.3f')} "
                f"| {_cell(m.get('recall@20'), '.3f')} | {_cell(m.get('coverage@10'), '.3f')} |"
                for name, m in rows[0]["ranking_baselines"].items()
            ]
            lines.append("")
    lines += [
        "Plots: `plots/accuracy_vs_epsilon.png`, `plots/accuracy_vs_round.png`, `plots/bytes_per_round.png`.",
        "",
        "Run folders (config.toml, rounds.jsonl, summary.json, adapter/, plots/): "
        + ", ".join(f"`{r['folder']}`" for r in rows),
        "",
    ]
    return "\n".join(lines)


def write_plots(rows: list[Mapping[str, Any]], folder: Path) -> list[Path]:
    """Accuracy vs epsilon, accuracy vs round and bytes per round of every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    private = [r for r in rows if r["epsilon"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epsilon"] for r in private], [r["auc"] for r in private], "o", label="AUC")
    if any(r["hr@10"] is not None for r in private):
        ax.plot([r["epsilon"] for r in private], [r["hr@10"] for r in private], "s", label="HR@10")
    for r in rows:
        if r["epsilon"] is None:
            ax.axhline(r["auc"], linestyle="--", linewidth=0.8, label=f"{r['method']} (AUC, no record-level DP)")
    ax.set(xlabel="record-level epsilon (max over clients)", ylabel="accuracy", title="accuracy vs epsilon")
    ax.legend(fontsize=6)
    written.append(_save(fig, folder / "accuracy_vs_epsilon.png"))
    for key, name, label in (
        ("auc_by_round", "accuracy_vs_round.png", "AUC"),
        ("bytes_up_by_round", "bytes_per_round.png", "bytes up"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.plot(range(len(r[key])), r[key], marker="o", label=r["method"])
        ax.set(xlabel="round", ylabel=label, title=f"{label} per round")
        ax.legend(fontsize=6)
        written.append(_save(fig, folder / name))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
