"""The ServerApp's parts without a simulation: a round's record from its messages, the
recorder that writes rounds and checkpoints, the layers' checkpoint state, the summary.
"""

import json
import random
import statistics

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MessageType

from fedrec.config import resolve_config
from fedrec.models.adapter import adapter_to_arrays
from fedrec.models.split_check import full_forward_score
from fedrec.server.federation import compose
from fedrec.server.models import AdapterModel
from fedrec.server.recording_grid import Exchange
from fedrec.server.results import ResultsWriter
from fedrec.server.rounds import RoundRecorder, progress_line, summarize_round
from fedrec.server.summary import build_summary
from fedrec.tasks.metrics import auc_from_histograms
from fedrec.tasks.preference.dataset import load_split
from fedrec.tasks.preference.evaluation import CentralEvaluator, preference_metrics
from fedrec.tasks.preference.scoring import scorer_for

TRAIN, EVALUATE = MessageType.TRAIN, MessageType.EVALUATE


def _trained(node: int, examples: int, loss: float, epsilon: float, stage: str | None = None) -> Exchange:
    metrics = {"num-examples": examples, "declined": 0, "train_loss": loss, "epsilon": epsilon, "delta": 1e-5}
    return Exchange("up", TRAIN, node, 1000 + node, metrics=metrics, stage=stage)


def test_a_plain_round_counts_every_client_once():
    down = [Exchange("down", TRAIN, n, 500) for n in (1, 2, 3, 4, 5)]
    up = [
        _trained(1, 10, 0.5, 2.0),
        _trained(2, 30, 1.0, 3.0),
        _trained(3, 20, 9.0, 9.0),  # left out by the strategy: not averaged
        Exchange("up", TRAIN, 4, 40, metrics={"num-examples": 0, "declined": 1, "epsilon": 7.9}),
        Exchange("up", TRAIN, 5, 0, error="crashed"),
    ]
    evaluated = [
        Exchange("up", EVALUATE, 1, 10, metrics={"pos-hist": [1, 0, 2], "neg-hist": [0, 3, 0]}),
        Exchange("up", EVALUATE, 2, 10, metrics={"pos-hist": [0, 1, 0], "neg-hist": [2, 0, 0]}),
    ]
    record = summarize_round(3, down + up + evaluated, 1.5, excluded={3: "non-finite values"})
    assert (record["round"], record["clients_sampled"], record["clients_ok"]) == (3, 5, 2)
    assert (record["clients_declined"], record["clients_excluded"], record["clients_failed"]) == (1, 1, 1)
    assert record["train_loss"] == pytest.approx((10 * 0.5 + 30 * 1.0) / 40) and record["train_examples"] == 40
    assert (record["epsilon_max"], record["epsilon_median"], record["delta"]) == (3.0, 2.5, 1e-5)
    assert record["bytes_down"] == 5 * 500 and record["bytes_up"] == 1001 + 1002 + 1003 + 40 + 20
    assert record["excluded"] == {"3": "non-finite values"} and record["seconds"] == 1.5
    assert "no_reply" not in record and "bytes_by_stage" not in record
    assert record["auc_federated"] == pytest.approx(auc_from_histograms([1, 1, 2], [2, 3, 0]))


def test_a_secure_round_counts_stages_drops_and_silent_nodes():
    exchanges = [Exchange("down", TRAIN, n, 100, stage="setup") for n in (1, 2, 3)]
    exchanges += [Exchange("up", TRAIN, n, 60, stage="setup") for n in (1, 2)]  # node 3 never answers
    exchanges += [Exchange("down", TRAIN, n, 900, stage="collect-masked") for n in (1, 2, 3)]
    exchanges += [_trained(n, 10, 0.5, 1.0, stage="collect-masked") for n in (1, 2)]
    exchanges[-1].metrics["secagg-clipped"] = 4
    exchanges += [Exchange("down", TRAIN, 1, 50, stage="unmask"), Exchange("up", TRAIN, 1, 70, stage="unmask")]
    record = summarize_round(1, exchanges, 2.0, dropped={2})  # node 2 was dropped after its masked input
    assert (record["clients_sampled"], record["clients_ok"], record["clients_failed"]) == (3, 1, 2)
    assert record["no_reply"] == [3]
    assert record["bytes_by_stage"] == {
        "collect-masked": {"down": 2700, "up": 1001 + 1002},
        "setup": {"down": 300, "up": 120},
        "unmask": {"down": 50, "up": 70},
    }
    assert record["secagg_clipped"] == 0  # node 2's clipped values are not in the aggregate
    assert record["bytes_up"] == sum(s["up"] for s in record["bytes_by_stage"].values())


def _recorder(tmp_path, cfg, evaluator, start_round=0):
    federation = compose(cfg, grid=None)
    checkpoints = []
    writer = ResultsWriter(tmp_path / "run", cfg.to_run_config(), None)
    recorder = RoundRecorder(writer, federation, evaluator, cfg, start_round, lambda r, a, eps: checkpoints.append(r))
    return recorder, federation, checkpoints, writer


def test_the_recorder_writes_a_line_per_round_ranks_at_the_ends_and_checkpoints(tmp_path, capsys):
    cfg = resolve_config("smoke", overrides={"num-server-rounds": 2})
    calls = []

    def evaluator(arrays, rank):
        calls.append(rank)
        return {"auc": 0.6, "loss": 0.7} | ({"hr@10": 0.2, "ndcg@10": 0.1, "ranking_users": 5} if rank else {})

    recorder, federation, checkpoints, writer = _recorder(tmp_path, cfg, evaluator)
    arrays = ArrayRecord({"b": Array(np.zeros(2, dtype=np.float32))})
    for server_round in (0, 1, 2):
        federation.recording._pending += [Exchange("down", TRAIN, 7, 10), _trained(7, 5, 0.4, 1.5 + server_round)]
        metrics = recorder(server_round, arrays)
        assert metrics["auc"] == 0.6
    assert calls == [True, False, True] and checkpoints == [0, 1, 2]
    lines = [json.loads(line) for line in (writer.folder / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1, 2] and all(r["auc"] == 0.6 for r in lines)
    assert ["hr@10" in r for r in lines] == [True, False, True]
    assert recorder.node_epsilon == {7: 3.5}
    assert "[fedrec] round 2/2  auc 0.6000" in capsys.readouterr().out


def test_the_progress_line_shows_the_client_level_epsilon_beside_the_record_level_one():
    record = {"round": 3, "clients_ok": 9, "clients_declined": 0, "clients_excluded": 0, "clients_failed": 1}
    record |= {"bytes_up": 10, "bytes_down": 20, "seconds": 1.0, "epsilon_max": float("inf")}
    assert "eps max inf  clients ok" in progress_line(record, 5)
    line = progress_line(record | {"client_level_epsilon": 2.345}, 5)
    assert "eps max inf  client-level eps 2.35  clients ok/declined/excluded/failed 9/0/0/1" in line


def test_a_resumed_recorder_skips_the_initial_evaluation_and_counts_from_its_round(tmp_path):
    cfg = resolve_config("smoke", overrides={"num-server-rounds": 3})
    recorder, _, checkpoints, writer = _recorder(tmp_path, cfg, None, start_round=2)
    arrays = ArrayRecord({"b": Array(np.zeros(2, dtype=np.float32))})
    assert recorder(0, arrays) is None and not writer.rounds  # round 2 was recorded before the interruption
    recorder(1, arrays)
    assert [r["round"] for r in writer.rounds] == [3] and checkpoints == [3]


def test_the_layers_state_survives_a_checkpoint():
    cfg = resolve_config("smoke", overrides={"secure-aggregation": True, "client-dp": True})
    first = compose(cfg, grid=None)
    random.seed(5)
    first.secure.rng.random()
    first.secure.round = 4
    first.client_dp.accountant.history.append((1.2, 1.0, 1))
    first.client_dp.rng.normal()
    state = json.loads(json.dumps(first.state_dict()))  # JSON: what the checkpoint stores
    expected = (random.random(), first.secure.rng.random(), first.client_dp.rng.normal())
    second = compose(cfg, grid=None)
    second.load_state_dict(state)
    assert second.secure.round == 4 and second.client_dp.accountant.history == [(1.2, 1.0, 1)]
    assert (random.random(), second.secure.rng.random(), second.client_dp.rng.normal()) == expected
    assert second.strategy is second.client_dp and second.grid is second.secure


def test_the_summary_reports_final_metrics_privacy_and_bytes():
    cfg = resolve_config("smoke", overrides={"ranking-users": 4})
    model = AdapterModel(cfg)
    scorer, adapter = model.scorer, model.initial
    rounds = [
        {"round": 0, "auc": 0.5, "eval_loss": 0.7, "hr@10": 0.1, "bytes_up": 0, "bytes_down": 0},
        {"round": 1, "auc": 0.6, "eval_loss": 0.6, "bytes_up": 300, "bytes_down": 200},
        {
            "round": 2,
            "auc": 0.7,
            "eval_loss": 0.5,
            "hr@10": 0.3,
            "auc_federated": 0.65,
            "bytes_up": 300,
            "bytes_down": 200,
        },
    ]
    summary = build_summary(cfg, rounds, {1: 4.0, 2: 6.0, 3: 5.5}, model, 30, 12.0)
    assert summary["rounds"] == 2 and summary["eval_examples"] == 30 and summary["seconds"] == 12.0
    assert summary["metrics"] == {"auc": 0.7, "loss": 0.5, "hr@10": 0.3, "auc_federated": 0.65}
    assert summary["initial_metrics"] == {"auc": 0.5, "loss": 0.7, "hr@10": 0.1}
    assert summary["epsilon"] == {"max": 6.0, "median": statistics.median([4.0, 6.0, 5.5]), "target": 50.0}
    size = summary["bytes"]
    assert (size["up"], size["down"], size["total"], size["adapter"]) == (600, 400, 1000, adapter.count_bytes())
    assert size["full_model"] == sum(p.numel() * 4 for n, p in scorer.named_parameters() if "lora_" not in n)
    assert summary["ranking_candidates"] == 50 and summary["backbone"]["fingerprint"] == scorer.fingerprint
    assert summary["recommender"] == "llm"
    plain = build_summary(cfg.replace(dp=False), rounds, {}, model, 30, 1.0)
    assert plain["epsilon"] == {"max": None, "median": None, "target": None} and plain["delta"] is None


def test_the_central_evaluator_scores_the_configured_part_with_pooled_and_per_user_auc():
    overrides = {"test-interactions": 2, "validation-interactions": 2, "eval-split": "validation"}
    cfg = resolve_config("smoke", overrides=overrides)
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    evaluator = CentralEvaluator(scorer, central, 16, part="validation")
    assert evaluator.examples == central.held_out_examples("validation") != central.held_out_examples("test")
    metrics = evaluator(adapter_to_arrays(scorer), rank=False)
    full = np.array([full_forward_score(scorer, tokens) for tokens in evaluator.tokens])  # the model's own forward
    direct = preference_metrics(evaluator.examples, full)
    assert metrics["uauc_users"] == direct["uauc_users"] > 3 and metrics["examples"] == len(evaluator.examples)
    for key in ("auc", "auc_se", "uauc", "uauc_se"):
        assert metrics[key] == pytest.approx(direct[key], abs=1e-6), key
