import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedrec.client.app import parsed_config
from fedrec.client.evaluate import evaluate
from fedrec.client.node import LEDGER_FILE, PREFIX_CACHE_DIR, PRIVACY_STATE_KEY
from fedrec.client.train import train
from fedrec.config import ConfigError, resolve_config
from fedrec.data.interactions import DataError, load_interaction_data
from fedrec.models.adapter import adapter_to_arrays
from fedrec.models.prefix_cache import PREFIX_CACHE
from fedrec.models.split import SplitForward
from fedrec.models.split_check import full_forward_score
from fedrec.privacy.ledger import LedgerError, PersistentAccountant, load_ledger
from fedrec.tasks.metrics import roc_auc
from fedrec.tasks.preference.dataset import load_federated_data
from fedrec.tasks.preference.scoring import scorer_for

CFG = resolve_config("smoke", overrides={"num-server-rounds": 3})


pytestmark = pytest.mark.usefixtures("task_identity")


def _message(cfg, server_round: int, message_type: str = MessageType.TRAIN) -> Message:
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    config = ConfigRecord({"server-round": server_round, "backbone-fingerprint": scorer.fingerprint})
    content = RecordDict({"arrays": adapter_to_arrays(scorer), "config": config})
    return Message(content=content, dst_node_id=1, message_type=message_type)


def _context(partition_id: int = 0, **node_config) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": partition_id, "num-partitions": 3, **node_config},
        state=RecordDict(),
        run_config=CFG.to_run_config(),
    )


def test_train_reply_carries_adapter_and_privacy_metrics():
    context = _context()
    reply = train(_message(CFG, 1), context, CFG)
    metrics = reply.content.metric_records["metrics"]
    assert set(reply.content.array_records["arrays"].keys()) == set(adapter_to_arrays(scorer_for(CFG)).keys())
    for key in ("num-examples", "train_loss", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps"):
        assert key in metrics
    assert metrics["num-examples"] == 60 and metrics["declined"] == 0
    ledger = PersistentAccountant.from_record(context.state.config_records[PRIVACY_STATE_KEY], "rdp")
    assert metrics["epsilon"] == pytest.approx(ledger.epsilon(CFG.record_dp.target_delta))
    assert ledger.steps == metrics["steps"] > 0


def test_epsilon_composes_over_the_rounds_a_client_joins():
    context = _context()
    first = train(_message(CFG, 1), context, CFG).content.metric_records["metrics"]
    third = train(_message(CFG, 3), context, CFG).content.metric_records["metrics"]
    one = PersistentAccountant("rdp", [(first["noise_multiplier"], first["sample_rate"], first["steps"])])
    two = PersistentAccountant("rdp", [(first["noise_multiplier"], first["sample_rate"], first["steps"])] * 2)
    assert first["epsilon"] == pytest.approx(one.epsilon(CFG.record_dp.target_delta))
    assert third["epsilon"] == pytest.approx(two.epsilon(CFG.record_dp.target_delta))
    assert third["epsilon"] > first["epsilon"]


def test_client_at_its_budget_declines_with_a_reason():
    cfg = CFG.replace(noise_multiplier=1.0, target_epsilon=100.0)
    context = _context()
    ok = train(_message(cfg, 1), context, cfg).content.metric_records["metrics"]
    assert ok["declined"] == 0
    cfg = cfg.replace(target_epsilon=round(ok["epsilon"] * 1.2, 3))  # one more round would exceed it
    reply = train(_message(cfg, 2), context, cfg)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["declined"] == 1 and metrics["num-examples"] == 0
    assert not reply.content.array_records
    assert f"target-epsilon {cfg.record_dp.target_epsilon:g}" in reply.content.config_records["decline"]["reason"]
    assert metrics["epsilon"] == pytest.approx(ok["epsilon"])  # nothing was spent


def test_a_restarted_node_continues_its_budget_from_its_ledger_file(tmp_path):
    state_dir = tmp_path / "node-0"
    first = train(_message(CFG, 1), _context(0, **{"state-dir": str(state_dir)}), CFG)
    spent = first.content.metric_records["metrics"]["epsilon"]
    ledger = load_ledger(state_dir / LEDGER_FILE, "rdp")
    assert spent > 0 and ledger.epsilon(CFG.record_dp.target_delta) == pytest.approx(spent)
    # a restart: a fresh context (empty state), the same folder on disk
    second = train(_message(CFG, 2), _context(0, **{"state-dir": str(state_dir)}), CFG)
    again = second.content.metric_records["metrics"]["epsilon"]
    fresh = train(_message(CFG, 2), _context(0), CFG).content.metric_records["metrics"]["epsilon"]
    assert again > spent and fresh == pytest.approx(spent)  # without the file the budget would have restarted
    assert load_ledger(state_dir / LEDGER_FILE, "rdp").epsilon(CFG.record_dp.target_delta) == pytest.approx(again)
    assert sorted(p.name for p in state_dir.iterdir()) == sorted([LEDGER_FILE, PREFIX_CACHE_DIR])  # no temporary files


def test_a_restarted_node_loads_its_prefix_states_from_disk(tmp_path, monkeypatch):
    """Each call below starts with an empty in-memory cache, as a fresh ClientApp process does."""
    trunk_runs = []
    run_to_split = SplitForward.run_to_split

    def counted(self, autocast, **inputs):
        trunk_runs.append(1)
        return run_to_split(self, autocast, **inputs)

    monkeypatch.setattr(SplitForward, "run_to_split", counted)

    def fresh_process(call, *args):
        PREFIX_CACHE.clear()
        trunk_runs.clear()
        return call(*args).content

    node = {"state-dir": str(tmp_path)}
    fresh_process(train, _message(CFG, 1), _context(0, **node), CFG)
    assert trunk_runs and len(list((tmp_path / PREFIX_CACHE_DIR).iterdir())) == 1
    stored = fresh_process(train, _message(CFG, 2), _context(0, **node), CFG)
    assert not trunk_runs  # the frozen trunk did not run again
    computed = fresh_process(train, _message(CFG, 2), _context(0), CFG)  # no state-dir: computed
    assert trunk_runs
    for name, array in computed.array_records["arrays"].items():
        assert (stored.array_records["arrays"][name].numpy() == array.numpy()).all()

    first = fresh_process(evaluate, _message(CFG, 2, MessageType.EVALUATE), _context(0, **node), CFG)
    assert trunk_runs and len(list((tmp_path / PREFIX_CACHE_DIR).iterdir())) == 2  # the test prompts
    again = fresh_process(evaluate, _message(CFG, 2, MessageType.EVALUATE), _context(0, **node), CFG)
    assert not trunk_runs and again.metric_records["metrics"]["pos-hist"] == first.metric_records["metrics"]["pos-hist"]

    for path in (tmp_path / PREFIX_CACHE_DIR).iterdir():
        path.write_bytes(b"damaged")
    fresh_process(train, _message(CFG, 3), _context(0, **node), CFG)
    assert trunk_runs  # recomputed, and stored again
    fresh_process(train, _message(CFG, 3), _context(0, **node), CFG)
    assert not trunk_runs


def test_a_node_whose_ledger_file_is_spent_declines_after_a_restart(tmp_path):
    cfg = CFG.replace(noise_multiplier=1.0, target_epsilon=100.0)
    node_config = {"state-dir": str(tmp_path)}
    ok = train(_message(cfg, 1), _context(0, **node_config), cfg).content.metric_records["metrics"]
    cfg = cfg.replace(target_epsilon=round(ok["epsilon"] * 1.2, 3))
    reply = train(_message(cfg, 2), _context(0, **node_config), cfg)
    assert reply.content.metric_records["metrics"]["declined"] == 1


def test_a_corrupt_or_foreign_ledger_file_is_refused_and_kept(tmp_path):
    path = tmp_path / LEDGER_FILE
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="cannot be read"):
        train(_message(CFG, 1), _context(0, **{"state-dir": str(tmp_path)}), CFG)
    assert path.read_text() == "{not json"
    path.write_text(json.dumps({"mechanism": "prv", "history": [[1.0, 0.1, 10]]}))
    with pytest.raises(LedgerError, match="'prv' accountant"):
        load_ledger(path, "rdp")


def test_non_private_training_reports_infinite_epsilon():
    cfg = CFG.replace(dp=False)
    metrics = train(_message(cfg, 1), _context(), cfg).content.metric_records["metrics"]
    assert math.isinf(metrics["epsilon"]) and metrics["noise_multiplier"] == 0.0


def test_backbone_mismatch_is_refused():
    message = _message(CFG, 1)
    message.content.config_records["config"]["backbone-fingerprint"] = "0" * 16
    with pytest.raises(ValueError, match="backbone mismatch"):
        train(message, _context(), CFG)


def test_evaluate_reports_auc_and_histograms():
    message = _message(CFG, 1, MessageType.EVALUATE)
    reply = evaluate(message, _context(1), CFG)
    metrics = reply.content.metric_records["metrics"]
    data = load_federated_data(CFG.data, CFG.federation.seed, CFG.evaluation.eval_users, 3)
    examples = data.held_out_examples(1)
    labels = [ex.label for ex in examples]
    assert metrics["num-examples"] == len(examples) == 10 and 0 < sum(labels) < 10
    assert (sum(metrics["pos-hist"]), sum(metrics["neg-hist"])) == (sum(labels), 10 - sum(labels))
    scorer = scorer_for(CFG)  # the global adapter of the message, scored by the model's own forward
    full = [full_forward_score(scorer, tokens) for tokens in scorer.encode(data.prompts(examples))]
    assert metrics["auc"] == pytest.approx(roc_auc(labels, full))


def test_a_node_trains_on_its_own_data_file_and_a_bad_file_is_named(tmp_path):
    ratings = load_interaction_data("ml-100k").interactions
    mine = ratings[ratings["user"].isin(["1", "2"])]
    path = tmp_path / "my-interactions.csv"
    mine.to_csv(path, index=False)
    reply = train(_message(CFG, 1), _context(**{"data-path": str(path)}), CFG)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["declined"] == 0 and metrics["num-examples"] == 2 * CFG.data.train_examples_per_user
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating,timestamp\n1,1,great,0\n")
    with pytest.raises(DataError, match=r"bad\.csv line 2: column 'rating' must be a finite number"):
        train(_message(CFG, 1), _context(**{"data-path": str(bad)}), CFG)


def _fresh_interpreter(code: str) -> str:
    """stdout of ``code`` run by a new Python process on this checkout."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout


def test_the_client_app_module_loads_without_the_training_stack():
    """A SuperNode starts a process per message; SecAgg+'s key stages need no torch."""
    code = "import sys, fedrec.client.app; print(sorted({'torch', 'transformers', 'peft', 'opacus'} & {*sys.modules}))"
    assert _fresh_interpreter(code).strip() == "[]"


def test_opacus_is_imported_without_adding_a_root_logging_handler():
    count = "import logging; print(len(logging.getLogger().handlers))"
    assert _fresh_interpreter(f"import opacus; {count}").strip() == "1"  # what Opacus alone does
    assert _fresh_interpreter(f"import fedrec.privacy.record_level, fedrec.privacy.ledger; {count}").strip() == "0"


def test_a_runs_config_is_parsed_once_and_a_bad_one_is_refused_on_every_message():
    run_config = CFG.to_run_config()
    first = parsed_config(run_config)
    assert first == CFG and parsed_config(dict(run_config)) is first  # same settings: the parsed one
    changed = parsed_config({**run_config, "num-server-rounds": 4})
    assert changed.federation.num_server_rounds == 4 and parsed_config(run_config) is first
    for _ in range(2):
        with pytest.raises(ConfigError, match="no-such-key"):
            parsed_config({**run_config, "no-such-key": 1})
