"""Client-level DP: clipping bounds each client's contribution, distributed noise
shares, and the accountant against a direct RDP computation (real simulations).
"""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp.strategy import Strategy
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from safetensors.torch import load_file

from fedrec.client.app import build_client_app
from fedrec.config import ClientDPConfig, ConfigError, resolve_config
from fedrec.models.adapter import adapter_state
from fedrec.privacy.client_level.mechanism import client_noise_std, clip_update, effective_noise_multiplier
from fedrec.privacy.client_level.mod import client_dp_mod
from fedrec.privacy.client_level.sampling import PoissonSampling
from fedrec.privacy.client_level.strategy import ClientLevelDP
from fedrec.protocol.records import CLIENT_DP_CLIP as CLIP_KEY
from fedrec.protocol.records import CLIENT_DP_NOISE_STD as NOISE_STD_KEY
from fedrec.protocol.records import UPDATE_NORM as NORM_KEY
from fedrec.protocol.secagg import SECAGG_RECORD, STAGE_COLLECT
from fedrec.server.federation import compose
from fedrec.simulation.runner import absolute_paths, simulate
from fedrec.tasks.preference.scoring import scorer_for
from tests.conftest import run_configured

pytestmark = pytest.mark.usefixtures("task_identity")


def _direct_epsilon(noise_multipliers: list[float], delta: float) -> float:
    """Gaussian mechanism per release, no sampling amplification, composed in RDP."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=1.0, noise_multiplier=s, steps=1, orders=orders) for s in noise_multipliers)
    return get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]


def test_clip_update_bounds_the_joint_norm():
    deltas = [np.full((3, 4), 1.0), np.full(5, -2.0)]
    clipped, norm = clip_update(deltas, 1.5)
    assert norm == pytest.approx(math.sqrt(12 + 20))
    assert math.sqrt(sum(float((c**2).sum()) for c in clipped)) == pytest.approx(1.5)
    assert np.allclose(clipped[0] / clipped[0].max(), 1.0)  # the direction is kept
    small, _ = clip_update([np.full(4, 0.1)], 1.5)
    assert np.array_equal(small[0], np.full(4, 0.1))  # within the bound: unchanged


def _train_message(noise_std: float, size: int) -> Message:
    config = ConfigRecord({"server-round": 1, CLIP_KEY: 1.0, NOISE_STD_KEY: noise_std})
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(size, np.float32))}), "config": config})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _app_adding(delta: np.ndarray) -> ClientAppCallable:
    def app(msg: Message, context: Context) -> Message:
        start = msg.content["arrays"]["w"].numpy()
        arrays = ArrayRecord({"w": Array((start + delta).astype(np.float32))})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 7})}), reply_to=msg)

    return app


@pytest.mark.parametrize("noise_std", [0.0, 0.01])
def test_client_mod_clips_the_update_and_adds_its_noise_share(noise_std):
    size = 40_000
    delta = np.random.default_rng(0).normal(0, 1, size)
    delta *= 10.0 / np.linalg.norm(delta)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = client_dp_mod(_train_message(noise_std, size), context, _app_adding(delta))
    released = reply.content["arrays"]["w"].numpy().astype(np.float64)
    assert reply.content["metrics"][NORM_KEY] == pytest.approx(10.0, rel=1e-5)
    residual = released - delta / 10.0
    if noise_std == 0.0:
        assert np.linalg.norm(released) == pytest.approx(1.0, rel=1e-5)
        assert np.abs(residual).max() < 1e-6
    else:
        assert residual.std() == pytest.approx(noise_std, rel=0.03)
        assert abs(residual.mean()) < 4 * noise_std / math.sqrt(size)


def test_noise_shares_and_effective_multiplier():
    central = ClientDPConfig(client_dp_clip=0.5, client_dp_noise_multiplier=2.0)
    distributed = ClientDPConfig(client_dp_clip=0.5, client_dp_noise_multiplier=2.0, client_dp_noise="distributed")
    assert client_noise_std(central, 4) == 0.0 and effective_noise_multiplier(central, 4, 2) == 2.0
    assert client_noise_std(distributed, 4) == pytest.approx(0.5)  # 4 shares of variance 0.25 = (2 * 0.5)^2
    assert effective_noise_multiplier(distributed, 4, 4) == pytest.approx(2.0)
    assert effective_noise_multiplier(distributed, 4, 2) == pytest.approx(2.0 * math.sqrt(0.5))


def test_client_dp_settings_are_checked():
    with pytest.raises(ConfigError, match="client-dp-noise"):
        resolve_config("smoke", overrides={"client-dp": True, "client-dp-noise": "local"})
    with pytest.raises(ConfigError, match="client-dp-clip"):
        resolve_config("smoke", overrides={"client-dp": True, "client-dp-clip": 0.0})


def _rounds(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _adapter_change(cfg, out) -> float:
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    initial = adapter_state(scorer)
    final = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    return math.sqrt(sum(float(((final[n] - initial[n]) ** 2).sum()) for n in initial))


def test_central_client_dp_bounds_each_round_and_accounts_it(tmp_path):
    clip, sigma = 1e-3, 1e-3  # noise far below the clip: what moves the adapter is the clipped mean
    overrides = {"client-dp": True, "client-dp-clip": clip, "client-dp-noise-multiplier": sigma}
    cfg = resolve_config("smoke", overrides={**overrides, "out": str(tmp_path / "run")})
    out, summary = simulate(cfg)
    rounds = _rounds(out)
    assert [r["clients_ok"] for r in rounds[1:]] == [3, 3]
    assert all(r["update_norm_max"] > 10 * clip for r in rounds[1:])  # clipping did bind
    change = _adapter_change(cfg, out)
    assert 0.5 * clip < change <= 2 * clip * 1.01  # two rounds, each moving the mean by at most the clip
    for r in rounds[1:]:
        assert r["client_noise_multiplier"] == sigma
        assert r["client_level_epsilon"] == pytest.approx(
            _direct_epsilon([sigma] * r["round"], cfg.record_dp.target_delta)
        )
    assert summary["client_dp"]["epsilon"] == pytest.approx(_direct_epsilon([sigma, sigma], cfg.record_dp.target_delta))


def _drop_partition_zero(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Partition 0 fails when asked for its masked input: it dropped after sharing keys."""
    secagg = msg.content.config_records.get(SECAGG_RECORD)
    if secagg is not None and secagg["stage"] == STAGE_COLLECT and int(context.node_config["partition-id"]) == 0:
        raise RuntimeError("injected drop-out")
    return call_next(msg, context)


drop_partition_zero_app = build_client_app(outer_mods=[_drop_partition_zero])


def test_distributed_noise_under_secure_aggregation_accounts_for_drop_outs(tmp_path):
    sigma = 1.2
    cfg = resolve_config(
        "smoke",
        overrides={
            "client-dp": True,
            "client-dp-clip": 0.01,
            "client-dp-noise-multiplier": sigma,
            "client-dp-noise": "distributed",
            "secure-aggregation": True,
            "reconstruction-threshold": 2,  # 3 clients: survive one drop-out
            "out": str(tmp_path / "run"),
        },
    )
    cfg = absolute_paths(cfg)
    client_app = "tests.test_client_dp:drop_partition_zero_app"
    run_configured(cfg, client_app, tmp_path / "run")
    rounds = _rounds(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    effective = sigma * math.sqrt(2 / 3)  # 2 of 3 noise shares survived
    for r in rounds[1:]:
        assert (r["clients_ok"], r["clients_failed"]) == (2, 1)
        assert r["client_noise_multiplier"] == pytest.approx(effective)
        assert r["secagg_failure"] is None and r["secagg_clipped"] == 0
    assert summary["client_dp"]["epsilon"] == pytest.approx(
        _direct_epsilon([effective] * 2, cfg.record_dp.target_delta)
    )
    assert _adapter_change(cfg, tmp_path / "run") > 0
    assert torch.isfinite(torch.tensor(summary["metrics"]["auc"]))


class _EveryNode(Strategy):
    """Addresses every one of ``nodes`` nodes; aggregates to the first reply's adapter."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes

    def configure_train(self, server_round, arrays, config, grid):
        config = ConfigRecord({**dict(config), "server-round": server_round})
        content = [RecordDict({"arrays": arrays, "config": config.copy()}) for _ in range(self.nodes)]
        return [Message(c, dst_node_id=n + 1, message_type=MessageType.TRAIN) for n, c in enumerate(content)]

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        return (replies[0].content["arrays"] if replies else None), None

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self):
        pass


def _trained_reply(msg: Message, update: np.ndarray) -> Message:
    start = msg.content["arrays"]["w"].numpy()
    arrays = ArrayRecord({"w": Array((start + update).astype(np.float32))})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


def test_poisson_sampled_rounds_divide_by_the_expected_sample_and_are_accounted_with_amplification():
    nodes, rate, size, rounds = 40, 0.25, 20_000, 12
    dp = ClientDPConfig(client_dp=True, client_dp_clip=1.0, client_dp_noise_multiplier=1.3)
    strategy = ClientLevelDP(PoissonSampling(_EveryNode(nodes), rate, np.random.default_rng(3)), dp, seed=5)
    start = ArrayRecord({"w": Array(np.zeros(size, np.float32))})
    update = np.full(size, 0.05)  # norm 7.07: clipped to 1
    sizes = []
    for server_round in range(1, rounds + 1):
        messages = list(strategy.configure_train(server_round, start, ConfigRecord(), grid=None))
        sizes.append(len(messages))
        released, _ = strategy.aggregate_train(server_round, [_trained_reply(m, update) for m in messages])
        noise = released["w"].numpy().astype(np.float64) * rate * nodes - len(messages) * update / np.linalg.norm(
            update
        )
        assert noise.std() == pytest.approx(1.3, rel=0.03)  # z * clip on the sum, over the expected sample
        assert abs(noise.mean()) < 5 * 1.3 / math.sqrt(size)
    assert len(set(sizes)) > 1 and abs(np.mean(sizes) - rate * nodes) < 3  # independent coins, not a fixed count
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=rate, noise_multiplier=1.3, steps=rounds, orders=orders)
    assert strategy.epsilon(1e-3) == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=1e-3)[0])
    assert strategy.epsilon(1e-3) < _direct_epsilon([1.3] * rounds, 1e-3) / 2  # the amplification


def test_a_poisson_round_that_sampled_no_client_releases_the_noise_alone():
    dp = ClientDPConfig(client_dp=True, client_dp_clip=0.5, client_dp_noise_multiplier=2.0)
    strategy = ClientLevelDP(PoissonSampling(_EveryNode(4), 1e-9, np.random.default_rng(0)), dp, seed=1)
    start = ArrayRecord({"w": Array(np.ones(20_000, np.float32))})
    assert list(strategy.configure_train(1, start, ConfigRecord(), grid=None)) == []
    released, _ = strategy.aggregate_train(1, [])
    noise = (released["w"].numpy().astype(np.float64) - 1.0) * 1e-9 * 4
    assert noise.std() == pytest.approx(2.0 * 0.5, rel=0.03)
    assert strategy.accountant.history == [(2.0, 1e-9, 1)]


def test_with_secure_noise_the_servers_client_level_noise_and_sample_do_not_follow_the_seed():
    def draws(secure: bool) -> tuple[float, float]:
        overrides = {"client-dp": True, "client-sampling": "poisson", "fraction-train": 0.5, "secure-noise": secure}
        federation = compose(resolve_config("smoke", overrides=overrides), grid=None)
        return float(federation.client_dp.rng.random()), float(federation.sampling.rng.random())

    assert draws(False) == draws(False)  # a simulation reproduces its run
    assert draws(True) != draws(True)
