"""Printed summaries of a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _estimate(metrics: Mapping[str, Any], key: str) -> str:
    """``value ± se`` of a metric (``-`` when undefined)."""
    value, se = metrics.get(key), metrics.get(f"{key}_se")
    return "-" if value is None else f"{value:.4f}" + ("" if se is None else f" ± {se:.4f}")


def _round_rows(rounds: list[Mapping[str, Any]]) -> list[str]:
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
    return lines


def _privacy(summary: Mapping[str, Any]) -> str:
    eps = summary["epsilon"]
    privacy = (
        f"record-level DP: epsilon max {_cell(eps['max'], '.3f')}, median {_cell(eps['median'], '.3f')} "
        f"(target {eps['target']}), delta {summary['delta']}"
        if summary["dp"]
        else "non-private (no DP): epsilon = infinity"
    )
    statistics = summary.get("item_statistics")
    if statistics is not None:
        eps = statistics["user_level_epsilon"]
        privacy += (
            f"\nitem statistics from {statistics['clients']} clients (noise multiplier "
            f"{statistics['noise_multiplier']}, bound {statistics['bound']}): user-level epsilon {_cell(eps, '.3f')}"
            + (", included in the record-level epsilon above" if summary["dp"] else "")
        )
    client_dp = summary.get("client_dp")
    if client_dp is not None:
        privacy += (
            f"\nclient-level DP ({client_dp['noise']} noise, clip {client_dp['clip']}, noise multiplier "
            f"{client_dp['noise_multiplier']}): epsilon {client_dp['epsilon']:.3f}, delta {client_dp['delta']}"
        )
        if "user_level_epsilon" in client_dp:
            privacy += (
                f"\none client per user: user-level epsilon {client_dp['user_level_epsilon']:.3f} "
                "(the client-level releases composed with the item statistics)"
            )
    return privacy


def _preference(summary: Mapping[str, Any]) -> list[str]:
    final, initial = summary["metrics"], summary["initial_metrics"]
    users = f" over {final['uauc_users']} users" if final.get("uauc_users") else " (no user has both classes held out)"
    lines = [
        f"final AUC {_estimate(final, 'auc')} on {summary['eval_examples']} held-out interactions "
        f"(round 0: {_cell(initial['auc'], '.4f')}); UAUC {_estimate(final, 'uauc')}{users}",
    ]
    if summary.get("baselines"):
        lines.append("baselines on the same held-out interactions (no training, no privacy cost):")
        lines += [
            f"  {name:<16} AUC {_estimate(m, 'auc')}  UAUC {_estimate(m, 'uauc')}"
            for name, m in summary["baselines"].items()
        ]
    return lines


def _ranking(summary: Mapping[str, Any]) -> list[str]:
    final, initial = summary["metrics"], summary["initial_metrics"]
    if "hr@10" not in final or "ranking_baselines" not in summary:
        return []
    lines = [
        "",
        f"ranking ({final['ranking_users']} users, target among {summary['ranking_candidates']} candidates): "
        f"HR@10 {_estimate(final, 'hr@10')}, NDCG@10 {_estimate(final, 'ndcg@10')} "
        f"(round 0: {initial['hr@10']:.4f}, {initial['ndcg@10']:.4f})",
        "ranking baselines on the same cases (HR@10, NDCG@10):",
    ]
    lines += [
        f"  {name:<16} {_estimate(m, 'hr@10')}  {_estimate(m, 'ndcg@10')}"
        for name, m in summary["ranking_baselines"].items()
    ]
    paired = summary.get("paired_differences") or {}
    if paired:
        lines.append("the model minus each baseline, per user on the same cases (HR@10, NDCG@10; paired SE):")
        lines += [
            f"  {name:<16} {d['hr@10_diff']:+.4f} ± {d['hr@10_diff_se']:.4f}  "
            f"{d['ndcg@10_diff']:+.4f} ± {d['ndcg@10_diff_se']:.4f}"
            for name, d in paired.items()
        ]
    return lines


def _model_size(summary: Mapping[str, Any]) -> str:
    """The size of what travels, against the backbone's for an adapter."""
    size = summary["bytes"]
    if "full_model" not in size:
        return f"global model (item tables) {size['adapter']:,}"
    share = size["adapter_to_full_model"]
    return f"one adapter {size['adapter']:,} = {share:.3%} of the backbone ({size['full_model']:,})"


def summary_table(rounds: list[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """Per-round table (AUC, epsilon, bytes, time), totals, and the final metrics with
    their standard errors beside the baselines'.
    """
    size, preference = summary["bytes"], _preference(summary)
    lines = [
        *_round_rows(rounds),
        "",
        *preference[:1],
        _privacy(summary),
        f"bytes: up {size['up']:,}  down {size['down']:,}  total {size['total']:,}; {_model_size(summary)}",
        f"time: {summary['seconds']:.1f} s",
        *preference[1:],
        *_ranking(summary),
    ]
    return "\n".join(lines)
