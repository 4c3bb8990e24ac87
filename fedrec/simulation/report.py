"""Printed summaries of a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(rounds: list[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """Per-round table (AUC, epsilon, bytes, time), totals and baselines beside."""
    lines = [
        f"{'round':>5} {'AUC':>7} {'fed AUC':>7} {'loss':>7} {'eps max':>8} {'eps med':>8} "
        f"{'ok/dec/fail':>11} {'bytes up':>12} {'bytes down':>12} {'sec':>7}",
    ]
    for r in rounds:
        lines.append(
            f"{r['round']:>5} {_cell(r.get('auc'), '.4f'):>7} {_cell(r.get('auc_federated'), '.4f'):>7} "
            f"{_cell(r.get('train_loss'), '.4f'):>7} {_cell(r.get('epsilon_max'), '.3f'):>8} "
            f"{_cell(r.get('epsilon_median'), '.3f'):>8} "
            f"{r['clients_ok']}/{r['clients_declined']}/{r['clients_failed']:<5}".rjust(11)
            + f" {r['bytes_up']:>12,} {r['bytes_down']:>12,} {r['seconds']:>7.1f}"
        )
    eps = summary["epsilon"]
    privacy = (
        f"record-level DP: epsilon max {_cell(eps['max'], '.3f')}, median {_cell(eps['median'], '.3f')} "
        f"(target {eps['target']}), delta {summary['delta']}"
        if summary["dp"]
        else "non-private (no DP): epsilon = infinity"
    )
    client_dp = summary.get("client_dp")
    if client_dp is not None:
        privacy += (
            f"\nclient-level DP ({client_dp['noise']} noise, clip {client_dp['clip']}, noise multiplier "
            f"{client_dp['noise_multiplier']}): epsilon {client_dp['epsilon']:.3f}, delta {client_dp['delta']}"
        )
    size = summary["bytes"]
    lines += [
        "",
        f"final AUC {_cell(summary['metrics']['auc'], '.4f')} on {summary['eval_examples']} held-out interactions "
        f"(round 0: {_cell(summary['initial_metrics']['auc'], '.4f')})",
        privacy,
        f"bytes: up {size['up']:,}  down {size['down']:,}  total {size['total']:,}; one adapter {size['adapter']:,} "
        f"= {size['adapter_to_full_model']:.3%} of the backbone ({size['full_model']:,})",
        f"time: {summary['seconds']:.1f} s",
    ]
    if summary.get("baselines"):
        lines.append("baselines on the same held-out interactions (AUC, no training, no privacy cost):")
        lines += [f"  {name:<16} {_cell(auc, '.4f')}" for name, auc in summary["baselines"].items()]
    final, initial = summary["metrics"], summary["initial_metrics"]
    if "hr@10" in final and "ranking_baselines" in summary:
        lines += [
            "",
            f"ranking ({final['ranking_users']} users, target among {summary['ranking_candidates']} candidates): "
            f"HR@10 {final['hr@10']:.4f}, NDCG@10 {final['ndcg@10']:.4f} "
            f"(round 0: {initial['hr@10']:.4f}, {initial['ndcg@10']:.4f})",
            "ranking baselines on the same cases (HR@10, NDCG@10):",
        ]
        lines += [
            f"  {name:<16} {m['hr@10']:.4f}  {m['ndcg@10']:.4f}" for name, m in summary["ranking_baselines"].items()
        ]
    return "\n".join(lines)
