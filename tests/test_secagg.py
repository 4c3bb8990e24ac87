"""SecAgg+ on real Flower simulations: the secure aggregate equals FedAvg of the same
updates, drop-outs are survived up to the threshold, and a round beyond it fails
cleanly keeping the previous adapter.

The test ClientApp's update is a fixed function of (trial seed, node id), so the test
ServerApp can compute plain FedAvg of the very updates the clients mask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Metadata
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    Krum,
)

from fedrec.config import SecAggConfig
from fedrec.privacy.secagg.crypto import CHUNK_WORDS, KeyStream, SecAggError, add_masks, neighbours
from fedrec.privacy.secagg.grid import SecAggGrid, masking_parameters, require_linear_strategy
from fedrec.privacy.secagg.mod import NEXT_STATE_KEY, STATE_KEY, secagg_mod
from fedrec.privacy.secagg.quantization import (
    MaskedSum,
    dequantize_mean,
    mask_update,
    quantize_update,
    rounding_key,
    split_flat,
)
from fedrec.protocol.replies import decline_reply
from fedrec.protocol.secagg import (
    CLEAR_METRICS,
    MASKED_RECORD,
    SECAGG_RECORD,
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    MaskingParameters,
    stage_record,
)
from fedrec.server.recording_grid import RecordingGrid
from tests.conftest import run_test_apps

NUM_NODES = 20
SETTINGS = SecAggConfig(num_shares=5, reconstruction_threshold=3, clipping_range=2.0, max_weight=1000.0)


def client_update(seed: int, node_id: int, shapes: list[tuple[int, ...]]) -> tuple[list[np.ndarray], int]:
    """The update and weight a node trains in a trial (known to the test oracle)."""
    rng = np.random.default_rng([seed, node_id % (2**32)])
    return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in shapes], int(rng.integers(1, 1000))


def _dropout_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Fail on purpose at a stage named in the message, as a crashing node would, or
    lose the node's SecAgg+ state before the next round, as a restarted node would.
    """
    stage = msg.content.config_records.get(SECAGG_RECORD, {}).get("stage")
    config = msg.content.config_records.get("config", {})
    drop = context.state.config_records.get("drop")
    if stage == STAGE_UNMASK and drop is not None and msg.metadata.dst_node_id in drop["unmask"]:
        raise RuntimeError("node fails after sending its masked input")
    secure_round = msg.content.config_records.get(SECAGG_RECORD, {}).get("round")
    if stage in (STAGE_SHARE_KEYS, STAGE_COLLECT) and drop is not None and msg.metadata.dst_node_id in drop["forget"]:
        if secure_round == drop["forget-in-round"]:
            for key in (STATE_KEY, NEXT_STATE_KEY):
                context.state.config_records.pop(key, None)
    if stage == STAGE_COLLECT:
        context.state["drop"] = ConfigRecord(
            {
                "unmask": [int(n) for n in config.get("drop-at-unmask", [])] or [0],
                "forget": [int(n) for n in config.get("forget-state", [])] or [0],
                "forget-in-round": int(secure_round) + 1,
            }
        )
        if msg.metadata.dst_node_id in [int(n) for n in config.get("drop-before-masked", [])]:
            raise RuntimeError("node fails before sending its masked input")
    return call_next(msg, context)


client_app = ClientApp(mods=[_dropout_mod, secagg_mod])


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    shapes = [tuple(a.shape) for a in arrays.values()]
    if msg.content["config"].get("decline", False):
        return decline_reply(msg, "no training examples on this node", {})
    deltas, weight = client_update(int(msg.content["config"]["trial-seed"]), msg.metadata.dst_node_id, shapes)
    trained = {k: Array(a.numpy() + d) for (k, a), d in zip(arrays.items(), deltas, strict=True)}
    metrics = MetricRecord({"num-examples": weight, "train_loss": 0.5})
    return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg)


def _trials() -> list[dict]:
    rng = np.random.default_rng(7)
    trials = []
    for k, size in enumerate([3, 4, 9, 20]):
        shapes = [tuple(int(d) for d in rng.integers(1, 6, size=rng.integers(1, 3))) for _ in range(rng.integers(1, 4))]
        trials.append({"name": f"clients-{size}", "size": size, "seed": 100 + k, "shapes": shapes})
    trials.append({"name": "drop-before", "size": 9, "seed": 200, "shapes": [(4, 3)], "before": 2})
    trials.append({"name": "drop-after", "size": 9, "seed": 201, "shapes": [(4, 3)], "after": 2})
    trials.append({"name": "drop-both", "size": 12, "seed": 202, "shapes": [(5,)], "before": 1, "after": 1})
    trials.append({"name": "beyond-threshold", "size": 6, "seed": 203, "shapes": [(5,)], "before": 4})
    trials.append({"name": "all-decline", "size": 4, "seed": 204, "shapes": [(5,)], "decline": True})
    return trials


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    """Every trial against the oracle, written to the run config's ``out`` as JSON."""
    deadline = time.monotonic() + 120
    while len(nodes := sorted(grid.get_node_ids())) < NUM_NODES and time.monotonic() < deadline:
        time.sleep(0.5)
    results = {}
    for trial in _trials():
        rng = np.random.default_rng(trial["seed"])
        chosen = [nodes[i] for i in rng.choice(len(nodes), size=trial["size"], replace=False)]
        before = chosen[: trial.get("before", 0)]
        after = chosen[len(before) : len(before) + trial.get("after", 0)]
        current = [rng.normal(size=s).astype(np.float32) for s in trial["shapes"]]
        arrays = ArrayRecord({f"t{i}": Array(a) for i, a in enumerate(current)})
        config = ConfigRecord(
            {
                "trial-seed": trial["seed"],
                "drop-before-masked": before or [0],
                "drop-at-unmask": after or [0],
                "decline": trial.get("decline", False),
            }
        )
        messages = [
            Message(
                RecordDict({"arrays": arrays, "config": config}),
                dst_node_id=n,
                message_type=MessageType.TRAIN,
                group_id="1",
            )
            for n in chosen
        ]
        secure = SecAggGrid(grid, SETTINGS, seed=trial["seed"])
        replies = list(secure.send_and_receive(messages, timeout=120))
        ok = [r for r in replies if not r.has_error()]
        survivors = [n for n in chosen if n not in before]
        updates = [client_update(trial["seed"], n, trial["shapes"]) for n in survivors]
        total = sum(w for _, w in updates)
        expected = [c + sum(u[i] * w for u, w in updates) / total for i, c in enumerate(current)]
        got = [ok[0].content["arrays"][f"t{i}"].numpy() for i in range(len(current))] if ok else None
        bound = len(survivors) * (2 * SETTINGS.clipping_range + 0.5) / SETTINGS.quantization_range / (total / 1000)
        bound += 1e-6  # float32 adapters
        results[trial["name"]] = {
            "replies": len(replies),
            "ok": len(ok),
            "survivors": len(survivors),
            "identical": bool(ok)
            and all(
                np.array_equal(r.content["arrays"][k].numpy(), ok[0].content["arrays"][k].numpy())
                for r in ok
                for k in arrays
            ),
            "max_error": None
            if got is None
            else max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True)),
            "bound": bound,
            "failures": secure.failures,
            "dropped_at_unmask": sum(STAGE_UNMASK in reason for reason in secure.last_dropped.values()),
            "errors": [r.error.reason for r in replies if r.has_error()],
        }
    # FedAvg through Strategy.start: a failed round keeps the previous adapter.
    initial = ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))})
    secure = SecAggGrid(grid, SETTINGS, seed=1)
    seen: dict[int, np.ndarray] = {}

    def record(server_round: int, arrays: ArrayRecord) -> None:
        seen[server_round] = arrays["w"].numpy().copy()

    FedAvg(fraction_train=0.3, min_available_nodes=len(nodes)).start(
        grid=secure,
        initial_arrays=initial,
        num_rounds=1,
        train_config=ConfigRecord({"trial-seed": 5, "drop-before-masked": nodes, "drop-at-unmask": [0]}),
        evaluate_fn=record,
    )
    results["strategy-failed-round"] = {
        "kept": bool(np.array_equal(seen[1], initial["w"].numpy())),
        "failures": secure.failures,
    }
    results["consecutive"] = _consecutive_rounds(grid, nodes)
    results["composition"] = _composition(grid, nodes)
    results["privacy"] = _what_the_server_receives(grid, nodes)
    Path(str(context.run_config["out"])).write_text(json.dumps(results))


class CapturingGrid(RecordingGrid):
    """Keeps every reply the server side receives."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.received: list[Message] = []

    def _record_replies(self, replies: Iterable[Message]) -> list[Message]:
        replies = super()._record_replies(replies)
        self.received.extend(replies)
        return replies


def _composition(grid: Grid, nodes: list[int]) -> dict[str, float]:
    """FedAdam and a client-level DP wrapper, unchanged, over plain and secure grids."""
    strategies = {
        "fedadam": lambda: FedAdam(min_available_nodes=len(nodes), eta=0.05),
        "dp-client-side-clipping": lambda: DifferentialPrivacyClientSideFixedClipping(
            FedAvg(min_available_nodes=len(nodes)), noise_multiplier=0.5, clipping_norm=1.0, num_sampled_clients=20
        ),
    }
    initial = ArrayRecord({"w": Array(np.zeros((6, 5), dtype=np.float32)), "b": Array(np.ones(3, dtype=np.float32))})
    gaps = {}
    for name, make in strategies.items():
        finals = []
        for wrapped in (grid, SecAggGrid(grid, SETTINGS, seed=3)):
            np.random.seed(0)  # the DP wrapper's Gaussian noise
            seen: dict[int, ArrayRecord] = {}
            make().start(
                grid=wrapped,
                initial_arrays=initial,
                num_rounds=1,
                train_config=ConfigRecord({"trial-seed": 11, "drop-before-masked": [0], "drop-at-unmask": [0]}),
                evaluate_fn=lambda r, arrays, seen=seen: seen.__setitem__(r, arrays),
            )
            finals.append(seen[1])
        moved = max(float(np.abs(finals[0][k].numpy() - initial[k].numpy()).max()) for k in initial)
        gap = max(float(np.abs(finals[0][k].numpy() - finals[1][k].numpy()).max()) for k in initial)
        gaps[name] = {"moved": moved, "gap": gap}
    return gaps


def _consecutive_rounds(grid: Grid, nodes: list[int]) -> list[dict]:
    """Six rounds on one SecAggGrid: the same nodes twice, then a changed set four times.
    Node 1 fails at round 1's unmask (it shares nothing for round 2, so round 2 runs
    share-keys); node 3 loses its state after round 2 (it cannot use the keys it
    advertised for round 3); rounds 5 and 6 sample the nodes that shared with the
    previous unmask, and node 4 loses its state after round 5 (dropped at its masked input).
    """
    recording = RecordingGrid(grid)
    secure = SecAggGrid(recording, SETTINGS, seed=9)
    current = np.zeros((3, 4), dtype=np.float32)
    plan = [  # sampled, fails at unmask, forgets its state after the round, absent from the aggregate
        (nodes[:8], [nodes[1]], [0], []),
        (nodes[:8], [0], [nodes[3]], []),
        (nodes[2:10], [0], [0], [nodes[3]]),
        (nodes[2:10], [0], [0], []),
        (nodes[2:10], [0], [nodes[4]], []),
        (nodes[2:10], [0], [0], [nodes[4]]),
    ]
    rounds = []
    for k, (chosen, fail_at_unmask, forget, absent) in enumerate(plan):
        seed = 400 + k
        config = ConfigRecord(
            {"trial-seed": seed, "drop-before-masked": [0], "drop-at-unmask": fail_at_unmask, "forget-state": forget}
        )
        arrays = ArrayRecord({"t0": Array(current)})
        messages = [
            Message(
                RecordDict({"arrays": arrays, "config": config}),
                dst_node_id=n,
                message_type=MessageType.TRAIN,
                group_id="1",
            )
            for n in chosen
        ]
        replies = [r for r in secure.send_and_receive(messages, timeout=120) if not r.has_error()]
        updates = [client_update(seed, n, [(3, 4)]) for n in chosen if n not in absent]
        total = sum(w for _, w in updates)
        expected = current + sum(u[0] * w for u, w in updates) / total
        got = replies[0].content["arrays"]["t0"].numpy()
        exchanges = recording.take()
        rounds.append(
            {
                "ok": len(replies),
                **{
                    stage: sorted(
                        nodes.index(e.node_id) for e in exchanges if e.direction == "down" and e.stage == stage
                    )
                    for stage in ("setup", "share-keys")
                },
                "shared_ahead": sum(e.direction == "up" and "next-shared" in e.configs for e in exchanges),
                "dropped": {nodes.index(n): reason for n, reason in secure.last_dropped.items()},
                "advertised_mask_pks": [
                    bytes(e.configs[key]).hex()
                    for e in exchanges
                    if e.direction == "up" and e.error is None
                    for key in ("mask-pk", "next-mask-pk")
                    if key in e.configs
                ],
                "max_error": float(np.abs(got - expected).max()),
                "bound": len(updates)
                * (2 * SETTINGS.clipping_range + 0.5)
                / SETTINGS.quantization_range
                / (total / 1000)
                + 1e-6,
            }
        )
        current = got
    return rounds


def _what_the_server_receives(grid: Grid, nodes: list[int]) -> dict:
    """Everything the server side receives in a secure round, against the updates."""
    chosen, shape, seed = nodes[:8], (20, 20), 300
    capture = CapturingGrid(grid)
    current = ArrayRecord({"t0": Array(np.zeros(shape, dtype=np.float32))})
    config = ConfigRecord({"trial-seed": seed, "drop-before-masked": [0], "drop-at-unmask": [0]})
    messages = [
        Message(
            RecordDict({"arrays": current, "config": config}),
            dst_node_id=n,
            message_type=MessageType.TRAIN,
            group_id="1",
        )
        for n in chosen
    ]
    masking = masking_parameters(SETTINGS, secure_metrics=("train_loss",))
    replies = list(SecAggGrid(capture, SETTINGS, masking, seed=seed).send_and_receive(messages, timeout=120))
    arrays_seen, correlations, mask_means, clear = [], [], [], set()
    for reply in capture.received:
        clear |= {key for record in reply.content.metric_records.values() for key in record}
        for name, record in reply.content.array_records.items():
            arrays_seen.append(name)
            masked = record["t0"].numpy().astype(np.float64).ravel()
            update, _ = client_update(seed, reply.metadata.src_node_id, [shape])
            correlations.append(abs(float(np.corrcoef(masked, update[0].ravel())[0, 1])))
            mask_means.append(float(masked.mean() / SETTINGS.modulus_range))
    weights = [client_update(seed, n, [shape])[1] for n in chosen]
    return {
        "arrays_seen": arrays_seen,
        "correlations": correlations,
        "mask_means": mask_means,
        "clear_metrics": sorted(clear),
        "reply_metrics": [dict(r.content.metric_records["metrics"]) for r in replies],
        "mean_weight": float(np.mean(weights)),
    }


@pytest.fixture(scope="module")
def secagg_results(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("secagg")
    federation = {"num-supernodes": NUM_NODES, "client-resources-num-cpus": 1, "init-args-num-cpus": 2}
    apps = ("tests.test_secagg:server_app", "tests.test_secagg:client_app")
    run_test_apps(*apps, {"out": str(folder / "results.json")}, federation, folder)
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("trial", ["clients-3", "clients-4", "clients-9", "clients-20"])
def test_secure_aggregate_equals_fedavg_of_the_same_updates(secagg_results, trial):
    result = secagg_results[trial]
    assert result["ok"] == result["replies"] == result["survivors"] and result["identical"]
    assert result["max_error"] <= result["bound"], result


@pytest.mark.parametrize("trial", ["drop-before", "drop-after", "drop-both"])
def test_drop_outs_up_to_the_threshold_give_fedavg_of_the_survivors(secagg_results, trial):
    result = secagg_results[trial]
    assert not result["failures"]
    before = {"drop-before": 2, "drop-after": 0, "drop-both": 1}[trial]
    assert result["ok"] == result["survivors"] == result["replies"] - before
    assert result["dropped_at_unmask"] == {"drop-before": 0, "drop-after": 2, "drop-both": 1}[trial]
    assert result["max_error"] <= result["bound"], result


def test_drop_outs_beyond_the_threshold_fail_the_round_with_a_reason(secagg_results):
    result = secagg_results["beyond-threshold"]
    assert result["ok"] == 0 and len(result["errors"]) == result["replies"]
    assert "shares needed to reconstruct" in result["failures"][0][1]
    kept = secagg_results["strategy-failed-round"]
    assert kept["kept"] and kept["failures"]


def test_a_round_every_node_declines_fails_naming_their_reasons(secagg_results):
    result = secagg_results["all-decline"]
    assert result["ok"] == 0 and len(result["errors"]) == result["replies"] == 4
    failure = result["failures"][0][1]
    assert "no survivor trained" in failure and "declined: no training examples on this node" in failure


def test_nodes_sampled_again_skip_setup_and_share_keys_with_fresh_keys(secagg_results):
    rounds = secagg_results["consecutive"]
    assert [r["ok"] for r in rounds] == [8, 8, 7, 8, 8, 7]
    assert [r["setup"] for r in rounds] == [
        list(range(8)),
        [],  # node 1 failed round 1's unmask, but advertised keys with its masked input
        [8, 9],  # newly sampled
        [3],  # lost the keys it advertised in round 2, was dropped from round 3 before its masked input
        [],
        [],
    ]
    assert [r["share-keys"] for r in rounds] == [
        list(range(8)),
        list(range(8)),  # node 1 shared nothing for round 2 with its failed unmask
        list(range(2, 10)),  # another sample than the one shared for
        list(range(2, 10)),  # node 3 shared nothing for round 4
        [],  # every node of round 4's unmask shared for round 5, which sampled them again
        [],
    ]
    # shares for the next round go with unmask while samples repeat (round 3 sampled anew)
    assert [r["shared_ahead"] for r in rounds] == [7, 8, 0, 8, 8, 7]
    assert [sorted(r["dropped"]) for r in rounds] == [["1"], [], ["3"], [], [], ["4"]]  # JSON keys
    assert "share-keys" in rounds[2]["dropped"]["3"] and "without this round's setup" in rounds[2]["dropped"]["3"]
    assert rounds[5]["dropped"]["4"].startswith("collect-masked") and "without" in rounds[5]["dropped"]["4"]
    advertised = [pk for r in rounds for pk in r["advertised_mask_pks"]]
    assert len(advertised) == (8 + 8) + 8 + (2 + 7) + (1 + 8) + 8 + 7 and len(set(advertised)) == len(advertised)
    for r in rounds:  # round 6: node 4's pairwise masks removed with the mask key it shared in round 5's unmask
        assert r["max_error"] <= r["bound"], r


def test_a_node_unmasks_only_a_round_it_sent_its_masked_input_in(task_identity):
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})

    def stage(name: str, values: dict) -> Message:
        record = stage_record(name, {"round": 1, **values})
        return Message(RecordDict({SECAGG_RECORD: record}), dst_node_id=5, message_type=MessageType.TRAIN)

    keys = secagg_mod(stage(STAGE_SETUP, {}), context, call_next=None).content[SECAGG_RECORD]
    neighbourhood = {"nodes": [5], "channel-pks": [keys["channel-pk"]], "mask-pks": [keys["mask-pk"]], "threshold": 1}
    secagg_mod(stage(STAGE_SHARE_KEYS, neighbourhood), context, call_next=None)
    with pytest.raises(SecAggError, match="sent no masked input"):  # its seed share and key share would both leak
        secagg_mod(stage(STAGE_UNMASK, {"active": [5]}), context, call_next=None)


def test_masks_cancel_and_dropped_pair_masks_are_undone():
    rng = np.random.default_rng(0)
    settings = MaskingParameters(1.0, 1 << 20, 1 << 32, max_weight=10, weight_key="num-examples")
    nodes = [11, 22, 33, 44]
    seeds = {n: rng.bytes(16) for n in nodes}
    pair = {(a, b): rng.bytes(16) for a in nodes for b in nodes if a < b}
    pair_seed = {(a, b): pair[(min(a, b), max(a, b))] for a in nodes for b in nodes if a != b}
    deltas = {n: [rng.uniform(-0.5, 0.5, (3, 2))] for n in nodes}
    weights = {11: 2.0, 22: 5.0, 33: 1.0, 44: 7.0}
    masked = {}
    for n in nodes[:3]:  # node 44 shared keys but dropped before its masked input
        update = quantize_update(deltas[n], [np.zeros((3, 2))], weights[n], settings, rng.bytes(16))
        mask_update(update.flat, seeds[n], {p: pair_seed[(n, p)] for p in nodes if p != n}, n, 1 << 32)
        masked[n] = split_flat(update.flat, [(1,), (3, 2)])
    dropped = {(n, 44): pair_seed[(n, 44)] for n in nodes[:3]}
    masked_sum = MaskedSum([(1,), (3, 2)], 1 << 32)
    for n in nodes[:3]:
        masked_sum.add(masked[n])
        masked_sum.remove_self_mask(seeds[n])
    for (survivor, gone), seed in dropped.items():
        masked_sum.remove_pair_mask(survivor, gone, seed)
    total = masked_sum.result()
    mean = dequantize_mean(total, 3, settings)[0]
    expected = sum(deltas[n][0] * weights[n] for n in nodes[:3]) / sum(weights[n] for n in nodes[:3])
    assert np.abs(mean - expected).max() < 3 * (2 * 1.0 + 0.5) / (1 << 20) / (8 / 10)


def test_out_of_range_values_are_counted_and_a_wrapped_sum_is_refused():
    config = SecAggConfig(clipping_range=0.1, quantization_range=1 << 10, modulus_range=1 << 16, max_weight=1)
    settings = masking_parameters(config)
    update = quantize_update([np.array([0.05, 0.5, -0.7])], [np.zeros(3)], 1.0, settings, bytes(16))
    assert update.clipped == 2
    assert list(update.flat[[2, 3]]) == [1 << 10, 0]  # clipped onto the ends of the range
    with pytest.raises(Exception, match="outside"):
        quantize_update([np.zeros(2)], [np.zeros(2)], 2.0, settings, bytes(16))
    with pytest.raises(SecAggError, match="non-finite"):
        quantize_update([np.array([0.0, np.nan])], [np.zeros(2)], 1.0, settings, bytes(16))
    with pytest.raises(Exception, match="overflow or a corrupted masked input"):
        dequantize_mean([np.array([5]), np.array([3 * (1 << 10)])], 2, settings)
    with pytest.raises(ValueError, match="could wrap"):
        config.check_sum(64)


def test_rounding_is_unbiased_and_the_same_for_the_same_update():
    settings = MaskingParameters(1.0, 16, 1 << 16, max_weight=1, weight_key="num-examples")
    update = [np.full(20_000, 0.03)]  # level (0.03 + 1) * 16 / 2 = 8.24: 9 with probability 0.24

    def rounded(deltas: list[np.ndarray]) -> np.ndarray:
        return quantize_update(deltas, [np.zeros(20_000)], 1.0, settings, rounding_key(deltas, 1.0)).flat[1:]

    first = rounded(update)
    assert set(np.unique(first)) == {8, 9} and first.mean() == pytest.approx(8.24, abs=0.015)  # 5 sigma
    np.testing.assert_array_equal(rounded(update), first)  # a repeated (or resumed) run rounds alike
    assert not np.array_equal(rounded([update[0] + 1e-12]), first)  # another update: other draws


def test_masks_are_deterministic_uniform_seed_dependent_and_streamed_in_chunks():
    size = 2 * CHUNK_WORDS + 123  # masks are added chunk by chunk: the stream must run on across chunks

    def mask(seed: bytes, modulus: int = 1 << 32) -> np.ndarray:
        flat = np.zeros(size, dtype=np.uint32)
        add_masks(flat, [(seed, True)], modulus)
        return flat

    a = mask(b"k" * 16)
    np.testing.assert_array_equal(a, mask(b"k" * 16))
    assert not np.array_equal(a, mask(b"j" * 16))
    stream = KeyStream(b"k" * 16)
    np.testing.assert_array_equal(a[:1000], stream.next_words(1000))
    np.testing.assert_array_equal(a[1000:1500], stream.next_words(500))
    assert 0.49 < a.mean() / (1 << 32) < 0.51 and len(np.unique(a)) > 0.99 * size
    np.testing.assert_array_equal(mask(b"k" * 16, 1 << 20), a & ((1 << 20) - 1))
    flat = a.copy()
    add_masks(flat, [(b"k" * 16, False)], 1 << 32)
    assert not flat.any()  # subtracting the same stream undoes it
    with pytest.raises(ValueError, match="16 bytes"):
        KeyStream(b"k" * 32)


def test_neighbourhoods_are_symmetric_rings():
    graph = neighbours(list(range(10)), num_shares=5)
    assert all(len(h) == 5 and n in h for n, h in graph.items())
    assert all(n in graph[p] for n, h in graph.items() for p in h)
    assert neighbours([1, 2, 3], 5) == {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]}


def test_server_side_receives_no_update_in_the_clear(secagg_results):
    privacy = secagg_results["privacy"]
    assert privacy["arrays_seen"] == [MASKED_RECORD] * 8  # the only arrays: one masked input per client
    assert max(privacy["correlations"]) < 0.3  # 400 values each: masked inputs are unrelated to updates
    assert all(0.4 < m < 0.6 for m in privacy["mask_means"])  # and spread over the whole ring
    # no client's example count or loss in the clear: the weight and the loss were masked with the update
    assert set(privacy["clear_metrics"]) <= CLEAR_METRICS and "num-examples" not in privacy["clear_metrics"]
    assert "train_loss" not in privacy["clear_metrics"]
    for metrics in privacy["reply_metrics"]:  # what the strategy gets: the unmasked sum's means
        assert metrics["train_loss"] == pytest.approx(0.5, abs=1e-5)
        assert metrics["num-examples"] == pytest.approx(privacy["mean_weight"], rel=1e-4)


@pytest.mark.parametrize("strategy", ["fedadam", "dp-client-side-clipping"])
def test_linear_strategies_run_unchanged_on_secure_aggregation(secagg_results, strategy):
    result = secagg_results["composition"][strategy]
    assert result["moved"] > 1e-3  # the round really changed the model
    assert result["gap"] < 1e-3  # and the secure run gives the plain run's model


@pytest.mark.parametrize("strategy", [FedMedian(), Krum()])
def test_strategies_needing_individual_updates_are_refused(strategy):
    with pytest.raises(ValueError, match="needs each client's update"):
        require_linear_strategy(strategy)
    require_linear_strategy(FedAdam())


def test_secure_grid_refuses_a_round_whose_sum_could_wrap():
    config = SecAggConfig(quantization_range=1 << 20, modulus_range=1 << 21)
    messages = [
        Message(RecordDict(), metadata=Metadata(0, "", 0, n, "", "1", 0.0, 60.0, MessageType.TRAIN)) for n in (1, 2, 3)
    ]
    with pytest.raises(ValueError, match=r"3 clients x quantization-range .* could wrap"):
        SecAggGrid(grid=None, config=config).send_and_receive(messages)
