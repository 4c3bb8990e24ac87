"""LoRA-aware strategies: exact aggregation (FFA-LoRA, heterogeneous ranks), FedProx,
configuration, and each strategy in a real smoke simulation.
"""

import json
import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from fedrec.config import STRATEGIES, ConfigError, resolve_config
from fedrec.models.adapter import adapter_to_arrays, load_adapter_arrays, wire_state
from fedrec.simulation.runner import simulate
from fedrec.strategies import FedAvgLoRA, FFALoRA, build_strategy
from fedrec.tasks.preference.scoring import scorer_for
from fedrec.tasks.training import train_adapter
from tests.conftest import local, tiny_scorer

pytestmark = pytest.mark.usefixtures("task_identity")


def _train_on(scorer, client: int, steps: int = 4) -> None:
    """A few plain steps on client-specific data (different clients, different labels)."""
    texts = [f"client {client} item {i} {'liked' if (i + client) % 3 else 'disliked'}" for i in range(16)]
    labels = torch.tensor([float((i + client) % 3 != 0) for i in range(16)])
    states = scorer.prefix_states(scorer.encode(texts))
    train_adapter(scorer, states, labels, local(epochs=steps, batch_size=16, learning_rate=5e-2, seed=client))


def _products(scorer) -> dict[str, torch.Tensor]:
    """Each LoRA module's weight update ``scale * B A``."""
    return {
        name: (m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight).detach().clone()
        for name, m in scorer.peft.named_modules()
        if isinstance(m, LoraLayer)
    }


def _reply(arrays: ArrayRecord, examples: int) -> Message:
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _clients_then_aggregate(strategy, freeze_a: bool, weights=(3, 1)):
    """Two clients train from one global adapter; returns the clients' and the aggregate's products."""
    scorer = tiny_scorer(freeze_a=freeze_a)
    scorer.reset_adapter(7)
    global_arrays = adapter_to_arrays(scorer)
    client_products, replies = [], []
    for client, examples in enumerate(weights):
        load_adapter_arrays(scorer, global_arrays)
        _train_on(scorer, client)
        client_products.append(_products(scorer))
        replies.append(_reply(adapter_to_arrays(scorer), examples))
    strategy.global_arrays = global_arrays  # what configure_train remembers
    aggregate, _ = strategy.aggregate_train(1, replies)
    load_adapter_arrays(scorer, aggregate)
    return client_products, _products(scorer)


def _weighted_mean(products, weights):
    return {n: sum(w * p[n] for w, p in zip(weights, products, strict=True)) / sum(weights) for n in products[0]}


def test_ffa_lora_aggregate_is_the_average_of_products_and_fedavg_lora_is_not():
    ffa_clients, ffa_global = _clients_then_aggregate(FFALoRA(), freeze_a=True)
    expected = _weighted_mean(ffa_clients, (3, 1))
    for name, product in ffa_global.items():
        torch.testing.assert_close(product, expected[name], atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(ffa_clients[0][n], ffa_clients[1][n]) for n in expected)  # clients differ

    avg_clients, avg_global = _clients_then_aggregate(FedAvgLoRA(), freeze_a=False)
    expected = _weighted_mean(avg_clients, (3, 1))
    gap = max(float((avg_global[n] - expected[n]).norm() / expected[n].norm()) for n in expected)
    assert gap > 1e-3, "averaging A and B separately should miss the average of the products"


def test_ffa_lora_sends_only_b_half_the_bytes():
    full = wire_state(tiny_scorer())
    ffa = wire_state(tiny_scorer(freeze_a=True))
    assert ffa and all("lora_B" in name for name in ffa)
    assert set(ffa) < set(full)
    ratio = sum(t.numel() for t in ffa.values()) / sum(t.numel() for t in full.values())
    assert 0.1 < ratio < 0.9
    with pytest.raises(ValueError, match="FFA-LoRA trains only B"):
        FFALoRA().configure_train(1, ArrayRecord(torch_state_dict=full), ConfigRecord(), grid=None)


def test_heterogeneous_ranks_aggregate_to_the_average_of_products_and_bytes_scale_with_rank():
    ranks, weights = (4, 8, 16), (5, 2, 3)
    server = tiny_scorer(freeze_a=True, rank=16)
    with torch.no_grad():  # a global adapter that already learned something
        for name, param in server.peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.05)
    global_arrays = adapter_to_arrays(server)
    before = _products(server)
    strategy = FFALoRA(client_ranks=ranks)
    strategy.global_arrays = global_arrays
    replies, updates, sizes = [], [], {}
    for client, (rank, examples) in enumerate(zip(ranks, weights, strict=True)):
        scorer = tiny_scorer(freeze_a=True, rank=rank)
        for name, m in scorer.peft.named_modules():  # the client's A is the global A's first rows
            if isinstance(m, LoraLayer):
                global_a = dict(server.peft.named_modules())[name].lora_A["default"].weight
                assert torch.equal(m.lora_A["default"].weight, global_a[:rank])
        load_adapter_arrays(scorer, global_arrays, rank=rank)
        start = _products(scorer)
        _train_on(scorer, client)
        trained = adapter_to_arrays(scorer)
        sizes[rank] = sum(a.numpy().nbytes for a in trained.values())
        updates.append({n: p - start[n] for n, p in _products(scorer).items()})
        replies.append(_reply(trained, examples))
    assert sizes[8] == 2 * sizes[4] and sizes[16] == 4 * sizes[4]
    aggregate, _ = strategy.aggregate_train(1, replies)
    load_adapter_arrays(server, aggregate)
    after = _products(server)
    mean_update = _weighted_mean(updates, weights)
    for name in before:
        torch.testing.assert_close(after[name] - before[name], mean_update[name], atol=1e-6, rtol=1e-4)


def test_a_reply_of_an_unconfigured_rank_is_left_out(caplog):
    server = tiny_scorer(freeze_a=True, rank=16)
    strategy = FFALoRA(client_ranks=(8, 16))
    strategy.global_arrays = adapter_to_arrays(server)
    narrow, fitting = tiny_scorer(freeze_a=True, rank=4), tiny_scorer(freeze_a=True, rank=8)
    with caplog.at_level(logging.WARNING):
        arrays, _ = strategy.aggregate_train(1, [_reply(adapter_to_arrays(narrow), 1)])
    assert arrays is None and "expected (32, 16) or a configured rank" in caplog.text
    arrays, _ = strategy.aggregate_train(
        1, [_reply(adapter_to_arrays(narrow), 1), _reply(adapter_to_arrays(fitting), 1)]
    )
    assert arrays is not None  # the round goes on with the replies that fit


class _ThreeNodes:
    """What configure_train reads of a Grid: the connected nodes."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


@pytest.mark.parametrize(
    ("name", "flower"),
    [("fedadam", FedAdam), ("fedyogi", FedYogi), ("fedavgm", FedAvgM), ("fedprox", FedProx), ("fedavg", FedAvg)],
)
def test_distinct_updates_aggregate_as_flowers_own_strategy(name, flower):
    """Plain aggregation (no SecAgg+: each client's own update) of fedrec's strategy over
    two rounds equals Flower's strategy of the same keys (server optimizer state included).
    """
    cfg = resolve_config("smoke", overrides={"strategy": name, "server-learning-rate": 0.05})
    ours = build_strategy(cfg)
    agg = cfg.aggregation
    keys = {
        FedAdam: {"eta": 0.05, "beta_1": agg.server_beta1, "beta_2": agg.server_beta2, "tau": agg.server_tau},
        FedYogi: {"eta": 0.05, "beta_1": agg.server_beta1, "beta_2": agg.server_beta2, "tau": agg.server_tau},
        FedAvgM: {"server_learning_rate": 0.05, "server_momentum": agg.server_momentum},
        FedProx: {"proximal_mu": agg.proximal_mu},
        FedAvg: {},
    }[flower]
    theirs = flower(min_available_nodes=3, **keys)
    rng = np.random.default_rng(0)
    arrays = ArrayRecord({"b": Array(rng.normal(size=(4, 3)).astype(np.float32))})
    for server_round in (1, 2):
        for strategy in (ours, theirs):
            list(strategy.configure_train(server_round, arrays, ConfigRecord(), _ThreeNodes()))
        updates = [(rng.normal(size=(4, 3)).astype(np.float32) * 0.1, examples) for examples in (3, 7, 5)]
        replies = [_reply(ArrayRecord({"b": Array(arrays["b"].numpy() + d)}), n) for d, n in updates]
        ours_arrays, _ = ours.aggregate_train(server_round, replies)
        theirs_arrays, _ = theirs.aggregate_train(server_round, replies)
        np.testing.assert_allclose(ours_arrays["b"].numpy(), theirs_arrays["b"].numpy(), rtol=1e-6, atol=1e-7)
        assert not np.allclose(ours_arrays["b"].numpy(), arrays["b"].numpy())  # the round moved the model
        assert ours_arrays["b"].numpy().dtype == np.float32
        arrays = ours_arrays


def test_fedprox_keeps_the_adapter_closer_to_the_global_one():
    distances = {}
    for mu in (0.0, 5.0):
        scorer = tiny_scorer()
        scorer.reset_adapter(3)
        start = {n: p.detach().clone() for n, p in scorer.named_parameters() if p.requires_grad}
        texts = [f"item {i} {'liked' if i % 2 else 'disliked'}" for i in range(16)]
        states = scorer.prefix_states(scorer.encode(texts))
        labels = torch.tensor([float(i % 2) for i in range(16)])
        settings = local(epochs=6, batch_size=8, learning_rate=5e-2, proximal_mu=mu, seed=1)
        train_adapter(scorer, states, labels, settings)
        distances[mu] = sum(
            float((p.detach() - start[n]).norm() ** 2) for n, p in scorer.named_parameters() if n in start
        )
    assert 0 < distances[5.0] < 0.8 * distances[0.0]


def test_strategy_keys_build_the_named_strategy():
    names = {s: type(build_strategy(resolve_config("smoke", overrides={"strategy": s}))).__name__ for s in STRATEGIES}
    assert names == {
        "fedavg": "FedAvgLoRA",
        "ffa-lora": "FFALoRA",
        "fedadam": "FedAdamLoRA",
        "fedyogi": "FedYogiLoRA",
        "fedavgm": "FedAvgMLoRA",
        "fedprox": "FedProxLoRA",
    }
    adam = build_strategy(resolve_config("smoke", overrides={"strategy": "fedadam", "server-learning-rate": 0.02}))
    assert adam.eta == 0.02
    prox = build_strategy(resolve_config("smoke", overrides={"strategy": "fedprox", "proximal-mu": 0.5}))
    assert prox.proximal_mu == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "krum"}, "'strategy' must be one of"),
        ({"lora-ranks": "4,8"}, "aggregate exactly only with A frozen"),
        ({"lora-ranks": "4,x", "strategy": "ffa-lora"}, "'lora-ranks' must list positive integers"),
        ({"lora-ranks": "4,0", "strategy": "ffa-lora"}, "'lora-ranks' must list positive integers"),
        ({"server-beta2": 1.5}, "'server-beta2' must be in"),
        ({"proximal-mu": -1.0}, "'proximal-mu' must be >= 0"),
    ],
)
def test_bad_strategy_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("smoke", overrides=overrides)


def _rounds(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "overrides",
    [
        # plain aggregation of each strategy: test_distinct_updates_aggregate_as_flowers_own_strategy;
        # FedYogi is FedAdam's sibling; FedProx's proximal term:
        # test_fedprox_keeps_the_adapter_closer_to_the_global_one; client-level DP with a server
        # optimizer: test_resume (FedAdam), test_client_dp; FFA-LoRA's B-only bytes end to end:
        # test_benchmark's smoke suite
        {"strategy": "fedadam", "secure-aggregation": True, "max-weight": 100.0},
        {"strategy": "ffa-lora", "lora-ranks": "2,4,8", "secure-aggregation": True, "max-weight": 100.0},
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_each_strategy_runs_a_smoke_simulation(overrides, tmp_path):
    cfg = resolve_config("smoke", overrides={**overrides, "ranking-users": 0, "out": str(tmp_path / "run")})
    out, summary = simulate(cfg)
    rounds = _rounds(out)
    assert [(r["clients_ok"], r["clients_failed"]) for r in rounds[1:]] == [(3, 0), (3, 0)]
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    initial = wire_state(scorer)
    final = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(final[name], tensor) for name, tensor in initial.items()), "the adapter did not move"
    assert all(torch.isfinite(t).all() and t.dtype == torch.float32 for t in final.values())
    assert summary["bytes"]["adapter"] == adapter_to_arrays(scorer).count_bytes()
    assert all(r["secagg_failure"] is None for r in rounds[1:])
