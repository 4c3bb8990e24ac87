"""Real Flower simulations (Ray backend) of the smoke preset."""

import json
import shutil

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from safetensors.torch import load_file

from fedrec.cli import main
from fedrec.config import resolve_config
from fedrec.models.adapter import adapter_to_arrays
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import plan_round
from fedrec.simulation.engine import LocalSuperLink
from fedrec.simulation.runner import simulate
from fedrec.tasks.metrics import ndcg_at_k
from fedrec.tasks.preference.dataset import load_federated_data
from fedrec.tasks.preference.scoring import scorer_for

SUMMARY_KEYS = {"rounds", "metrics", "epsilon", "delta", "bytes", "seconds", "versions", "baselines", "compute_dtype"}
ROUND_KEYS = {
    "round",
    "clients_sampled",
    "clients_ok",
    "clients_failed",
    "train_loss",
    "auc",
    "epsilon_max",
    "epsilon_median",
    "delta",
    "bytes_up",
    "bytes_down",
    "seconds",
    "server_rss_bytes",
}


def _rounds(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_results_folder_has_every_part(smoke_run):
    cfg, out, summary = smoke_run
    assert (out / "config.toml").read_text().count("=") == len(cfg.to_run_config())
    assert SUMMARY_KEYS <= set(summary)
    assert summary == json.loads((out / "summary.json").read_text())  # what is printed is what is stored
    json.dumps(summary, allow_nan=False)  # undefined metrics (UAUC of one held-out item) are null, not NaN
    assert summary["baselines"]["most-popular"]["uauc"] is None and summary["metrics"]["auc_se"] > 0
    assert summary["rounds"] == 2
    assert summary["compute_dtype"] == "float32"  # the smoke preset's explicit choice
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert ROUND_KEYS <= set(r)
        assert (r["clients_sampled"], r["clients_ok"], r["clients_failed"]) == (3, 3, 0)
        assert 0.0 < r["epsilon_max"] <= cfg.record_dp.target_epsilon * 1.001
    assert rounds[2]["epsilon_max"] > rounds[1]["epsilon_max"]
    assert summary["epsilon"]["max"] == pytest.approx(rounds[2]["epsilon_max"])
    assert 0.0 <= summary["metrics"]["auc"] <= 1.0
    ranked = [r for r in rounds if "hr@10" in r]
    assert [r["round"] for r in ranked] == [0, 2]  # the initial and the final adapter
    assert all(0.0 <= r["hr@10"] <= 1.0 and r["ranking_users"] == cfg.evaluation.ranking_users for r in ranked)
    assert set(summary["ranking_baselines"]) == {"most-popular", "bpr-mf", "federated-mf", "random"}
    ranks = summary["metrics"]["ranks"]
    assert len(ranks) == cfg.evaluation.ranking_users and rounds[2]["ranks"] == ranks
    paired = summary["paired_differences"]
    assert set(paired) == {"most-popular", "bpr-mf", "federated-mf"}  # random has no ranks
    baseline = summary["ranking_baselines"]["bpr-mf"]["ranks"]
    gains = [ndcg_at_k([r], 10) - ndcg_at_k([b], 10) for r, b in zip(ranks, baseline, strict=True)]
    assert paired["bpr-mf"]["ndcg@10_diff"] == pytest.approx(np.mean(gains))
    assert paired["bpr-mf"]["ndcg@10_diff_se"] == pytest.approx(np.std(gains, ddof=1) / np.sqrt(len(gains)))
    assert summary["ranking_candidates"] == cfg.evaluation.ranking_negatives + 1
    assert {p.name for p in (out / "plots").iterdir()} == {
        "accuracy_vs_round.png",
        "epsilon_vs_round.png",
        "accuracy_vs_epsilon.png",
        "bytes_per_round.png",
    }


def test_only_the_adapter_crosses_the_wire(smoke_run):
    cfg, out, summary = smoke_run
    scorer = scorer_for(cfg)
    adapter_bytes = adapter_to_arrays(scorer).count_bytes()
    assert summary["bytes"]["adapter"] == adapter_bytes
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    rounds = _rounds(out)
    for r in rounds[1:]:
        config = ConfigRecord(
            {"backbone": cfg.model.backbone, "backbone-fingerprint": scorer.fingerprint, "server-round": r["round"]}
        )
        assert r["bytes_down"] == 3 * (adapter_bytes + config.count_bytes())
        assert 3 * adapter_bytes < r["bytes_up"] < 3 * (adapter_bytes + 1024)
    assert rounds[0]["bytes_up"] == rounds[0]["bytes_down"] == 0
    assert rounds[1]["bytes_up"] == rounds[2]["bytes_up"]
    assert summary["bytes"]["total"] == sum(r["bytes_up"] + r["bytes_down"] for r in rounds)
    assert summary["bytes"]["full_model"] > 100 * adapter_bytes


def test_clients_at_budget_decline_and_the_round_completes(tmp_path):
    base = resolve_config("smoke", overrides={"noise-multiplier": 1.0, "num-server-rounds": 3})
    data = load_federated_data(base.data, base.federation.seed, base.evaluation.eval_users, base.federation.num_clients)
    train = base.training
    plan = plan_round(base.record_dp, base.planned_dp_rounds, len(data.train_examples(0)), train.batch_size, 1)
    ledger = PersistentAccountant("rdp", [(plan.noise_multiplier, plan.sample_rate, plan.steps)])
    one, two = ledger.epsilon(1e-5), ledger.epsilon_after(plan.noise_multiplier, plan.sample_rate, plan.steps, 1e-5)
    cfg = base.replace(target_epsilon=round((one + two) / 2, 4), out=str(tmp_path / "run"))
    assert all(len(data.train_examples(i)) == len(data.train_examples(0)) for i in range(3))
    out, summary = simulate(cfg)
    rounds = _rounds(out)
    assert [(r["clients_ok"], r["clients_declined"], r["clients_failed"]) for r in rounds[1:]] == [
        (3, 0, 0),
        (0, 3, 0),
        (0, 3, 0),
    ]
    assert summary["epsilon"]["max"] == pytest.approx(one)
    # the global adapter stays the round-1 aggregate: evaluation does not move
    assert rounds[2]["auc"] == rounds[1]["auc"] == rounds[3]["auc"]
    assert rounds[2]["bytes_up"] < rounds[1]["bytes_up"] / 10


def test_secure_aggregation_gives_the_plain_runs_adapter(smoke_run, tmp_path):
    cfg, plain_out, plain = smoke_run
    secure_cfg = cfg.replace(secure_aggregation=True, max_weight=100.0, out=str(tmp_path / "secure"))
    out, summary = simulate(secure_cfg)
    plain_adapter = load_file(str(plain_out / "adapter" / "adapter_model.safetensors"))
    secure_adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert plain_adapter.keys() == secure_adapter.keys()
    for name, tensor in plain_adapter.items():
        torch.testing.assert_close(secure_adapter[name], tensor, atol=2e-3, rtol=1e-3)
    assert any(not torch.equal(secure_adapter[n], t) for n, t in plain_adapter.items())  # it really was quantized
    rounds = _rounds(out)
    for r in rounds[1:]:
        assert (r["clients_sampled"], r["clients_ok"], r["clients_failed"]) == (3, 3, 0)
        # later rounds sample the same nodes: keys came with the masked inputs, shares with unmask
        keys = {"setup", "share-keys"} if r["round"] == 1 else set()
        assert set(r["bytes_by_stage"]) == {"collect-masked", "unmask"} | keys
        assert r["bytes_up"] == sum(s["up"] for s in r["bytes_by_stage"].values())
        assert r["bytes_down"] == sum(s["down"] for s in r["bytes_by_stage"].values())
        assert r["secagg_clipped"] == 0 and r["secagg_failure"] is None
    # loss and example counts stayed on the nodes; the unmasked sum gives the plain run's totals
    for secure, clear in zip(rounds[1:], _rounds(plain_out)[1:], strict=True):
        assert secure["train_examples"] == clear["train_examples"] > 0
        assert secure["train_loss"] == pytest.approx(clear["train_loss"], abs=1e-4)
    assert summary["epsilon"]["max"] == pytest.approx(plain["epsilon"]["max"])


def test_fedrec_audit_recomputes_every_epsilon_and_fails_on_a_ledger_edited_by_one_step(smoke_run, tmp_path, capsys):
    cfg, out, summary = smoke_run
    assert main(["audit", str(out)]) == 0
    assert "ok: 3 clients, every epsilon recomputed with Opacus" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "privacy.jsonl").read_text().splitlines()]
    assert sorted({line["round"] for line in lines}) == [1, 2] and len({line["client"] for line in lines}) == 3
    steps = {}
    for line in lines:
        ledger = PersistentAccountant("rdp", [tuple(entry) for entry in line["ledger"]])
        assert line["epsilon"] == pytest.approx(ledger.epsilon(cfg.record_dp.target_delta), rel=1e-12)
        steps.setdefault(line["client"], []).append(ledger.steps)
    assert all(0 < first < second for first, second in steps.values())  # round 2's ledger adds its steps
    assert summary["epsilon"]["max"] == pytest.approx(max(line["epsilon"] for line in lines if line["round"] == 2))
    copy = tmp_path / "edited"
    copy.mkdir()
    for name in ("config.toml", "summary.json"):
        (copy / name).write_text((out / name).read_text())
    lines[-1]["ledger"][-1][2] -= 1  # one DP-SGD step fewer than the client took
    (copy / "privacy.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["audit", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"client {lines[-1]['client']}: round 2: reported epsilon" in err and "FAILED" in err
    (copy / "privacy.jsonl").unlink()
    assert main(["audit", str(copy)]) == 2
    assert "privacy.jsonl: cannot be read" in capsys.readouterr().err


def test_a_simulations_flower_processes_run_numpy_blas_on_one_thread_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    superlink = LocalSuperLink(tmp_path / "superlink.log")  # not started: its environment only
    try:
        assert superlink.env["OPENBLAS_NUM_THREADS"] == "1"
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
        assert superlink.env["OPENBLAS_NUM_THREADS"] == "4"
    finally:
        shutil.rmtree(superlink.home)
