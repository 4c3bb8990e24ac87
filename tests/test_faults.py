"""Fault injection in real Flower simulations: a crashing client, a client that hangs
past the round timeout and faulty updates (non-finite, mis-shaped, oversized,
malformed) are left out of the round with a logged reason; the round aggregates the
others.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from safetensors.torch import load_file

from fedrec.client.app import build_client_app
from fedrec.config import resolve_config
from fedrec.models.adapter import adapter_state
from fedrec.protocol.secagg import MASKED_RECORD, SECAGG_RECORD, STAGE_COLLECT, WEIGHT_KEY
from fedrec.simulation.runner import absolute_paths
from fedrec.strategies.aggregation import update_fault
from fedrec.tasks.preference.scoring import scorer_for
from tests.conftest import run_configured


def _corrupt(arrays: ArrayRecord, how: str) -> ArrayRecord:
    values = {name: array.numpy().copy() for name, array in arrays.items()}
    first = next(iter(values))
    if how == "nan":
        values[first].flat[0] = np.nan
    elif how == "wrong-shape":
        values[first] = values[first][:, :1]
    elif how == "oversized":
        values["extra"] = np.zeros(1_000_000, dtype=np.float32)
    return ArrayRecord({name: Array(v) for name, v in values.items()})


FAULTS = {0: "crash", 1: "nan", 2: "wrong-shape", 3: "oversized", 4: "malformed", 5: "hang"}
ROUND_TIMEOUT = 30.0  # seconds; the tiny model's honest clients answer in a few


def _faulty_partitions(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Partitions 0-4 misbehave as ``FAULTS`` says; the others train honestly."""
    fault = FAULTS.get(int(context.node_config["partition-id"]))
    if fault == "crash":
        raise RuntimeError("injected crash")
    if fault == "hang":
        time.sleep(ROUND_TIMEOUT + 10)  # answers after the round has ended without it
    reply = call_next(msg, context)
    if fault in ("nan", "wrong-shape", "oversized"):
        reply.content["arrays"] = _corrupt(reply.content["arrays"], fault)
    elif fault == "malformed":
        reply.content["extra"] = ConfigRecord({"note": "unexpected"})
    return reply


def _rounds(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _final_adapter_change(cfg, out) -> float:
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    initial = adapter_state(scorer)
    final = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values())
    return max(float((final[n] - initial[n]).abs().max()) for n in initial)


faulty_partitions_app = build_client_app(outer_mods=[_faulty_partitions])


def _run(cfg, client_app: str) -> None:
    cfg = absolute_paths(cfg)
    run_configured(cfg, client_app, Path(cfg.server.out))


def test_faulty_clients_are_left_out_with_a_reason_and_the_round_completes(tmp_path):
    out = tmp_path / "run"
    overrides = {"num-clients": 8, "num-server-rounds": 1, "round-timeout": ROUND_TIMEOUT, "ranking-users": 0}
    overrides["out"] = str(out)
    cfg = resolve_config("smoke", overrides=overrides)
    _run(cfg, "tests.test_faults:faulty_partitions_app")
    round_1 = _rounds(out)[1]
    assert (round_1["clients_sampled"], round_1["clients_ok"]) == (8, 2)
    assert (round_1["clients_failed"], round_1["clients_excluded"]) == (2, 4)  # the crash and the hang
    assert len(round_1["no_reply"]) == 1  # the hang
    reasons = sorted(round_1["excluded"].values())
    assert len(reasons) == 4
    assert any("non-finite" in r for r in reasons)
    assert any("mis-shaped" in r and "shape" in r for r in reasons)
    assert any("mis-shaped" in r and "names differ" in r for r in reasons)  # the oversized one's extra tensor
    assert any("malformed reply" in r and "extra" in r for r in reasons)
    assert round_1["epsilon_max"] > 0 and np.isfinite(round_1["train_loss"])
    assert _final_adapter_change(cfg, out) > 0  # the two honest clients moved the adapter


def _mis_shaped_masked_input(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Under secure aggregation partition 0 sends a masked input of the wrong length."""
    secagg = msg.content.config_records.get(SECAGG_RECORD)
    collect = secagg is not None and secagg["stage"] == STAGE_COLLECT
    reply = call_next(msg, context)
    if collect and int(context.node_config["partition-id"]) == 0:
        masked = {name: array.numpy() for name, array in reply.content[MASKED_RECORD].items()}
        name = next(n for n in masked if n != WEIGHT_KEY and masked[n].size > 1)
        masked[name] = masked[name].reshape(-1)[:-1]
        reply.content[MASKED_RECORD] = ArrayRecord({n: Array(v) for n, v in masked.items()})
    return reply


mis_shaped_masked_input_app = build_client_app(outer_mods=[_mis_shaped_masked_input])


def test_a_mis_shaped_masked_input_is_dropped_from_secure_aggregation(tmp_path):
    out = tmp_path / "run"
    cfg = resolve_config(
        "smoke",
        overrides={
            "num-server-rounds": 1,
            "ranking-users": 0,
            "secure-aggregation": True,
            "reconstruction-threshold": 2,  # 3 clients: survive one drop-out
            "out": str(out),
        },
    )
    _run(cfg, "tests.test_faults:mis_shaped_masked_input_app")
    round_1 = _rounds(out)[1]
    assert (round_1["clients_ok"], round_1["clients_failed"]) == (2, 1)
    assert round_1["secagg_failure"] is None
    (reason,) = round_1["secagg_dropped"].values()
    assert reason.startswith("collect-masked") and "masked input tensors differ" in reason
    assert _final_adapter_change(cfg, out) > 0


def _reply(content: dict) -> Message:
    return Message(content=RecordDict(content), dst_node_id=1, message_type=MessageType.TRAIN)


def test_update_fault_names_each_problem(task_identity):
    global_arrays = ArrayRecord({"b": Array(np.zeros((4, 2), dtype=np.float32))})

    def fault(arrays=None, metrics=None, **extra):
        content = {
            "arrays": arrays if arrays is not None else ArrayRecord({"b": Array(np.ones((4, 2), dtype=np.float32))}),
            "metrics": MetricRecord(metrics if metrics is not None else {"num-examples": 5}),
            **extra,
        }
        return update_fault(_reply(content), global_arrays, set(), "num-examples", 100.0)[0]

    assert fault() is None
    assert "non-finite" in fault(ArrayRecord({"b": Array(np.full((4, 2), np.inf, dtype=np.float32))}))
    assert "expected (4, 2)" in fault(ArrayRecord({"b": Array(np.ones((4, 3), dtype=np.float32))}))
    assert "names differ" in fault(ArrayRecord({"c": Array(np.ones((4, 2), dtype=np.float32))}))
    assert "dtype int64" in fault(ArrayRecord({"b": Array(np.ones((4, 2), dtype=np.int64))}))
    assert "expected a number in (0, 100]" in fault(metrics={"num-examples": 0})
    assert "expected a number in (0, 100]" in fault(metrics={"num-examples": 10**6})
    assert "'num-examples' is None" in fault(metrics={"loss": 1.0})
    assert "malformed reply" in fault(extra=ConfigRecord({"x": 1}))
