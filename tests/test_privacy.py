import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant, RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from fedrec.config import RecordDPConfig, resolve_config
from fedrec.data.interactions import load_interaction_data
from fedrec.privacy.audit import audit_ledgers
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import PrivateTraining, decline_reason, dp_sgd, plan_round, seed_dp_sgd
from fedrec.privacy.record_level.dp_sgd import REPRODUCIBLE_NOISE_NOTICE, SecureNoiseEngine, _note_reproducible_noise
from fedrec.tasks.metrics import roc_auc
from fedrec.tasks.preference.examples import split_examples
from fedrec.tasks.preference.prompt import render_preference_prompt
from fedrec.tasks.training import train_adapter
from tests.conftest import local, tiny_scorer, write_planted_dataset


def _examples(scorer, n=48):
    texts = [f"item {i} {'liked' if i % 2 else 'disliked'} now" for i in range(n)]
    return scorer.prefix_states(scorer.encode(texts)), torch.tensor([i % 2 for i in range(n)])


def test_a_long_ledger_gives_opacus_epsilon_of_its_raw_history_with_equal_entries_summed():
    history = [(0.9, 0.1, 1), (4.0, 1.0, 1), *[(0.9, 0.1, 1), (0.7, 0.1, 2)] * 10]  # one entry a round
    ledger = PersistentAccountant("rdp", history)
    raw = RDPAccountant()
    raw.history = list(history)
    assert ledger.opacus().history == [(0.9, 0.1, 11), (4.0, 1.0, 1), (0.7, 0.1, 20)]
    assert ledger.epsilon(1e-3) == pytest.approx(raw.get_epsilon(delta=1e-3), rel=1e-3)
    assert ledger.history == history  # what is stored (and audited) stays entry by entry


def test_a_ledger_of_distinct_entries_gives_opacus_epsilon_exactly():
    # a server's client-level ledger: one entry a round, its noise following the survivors
    history = [(0.9 + 0.01 * (r % 7), 0.1 + 0.001 * r, 1) for r in range(60)] + [(0.9, 0.1, 3)]
    for delta in (1e-3, 1e-5):
        raw = RDPAccountant()
        raw.history = PersistentAccountant("rdp", history).merged()
        assert PersistentAccountant("rdp", history).epsilon(delta) == raw.get_epsilon(delta=delta)
    prv = PersistentAccountant("prv", history[:5])
    reference = PRVAccountant()
    reference.history = prv.merged()
    assert prv.epsilon(1e-5) == pytest.approx(reference.get_epsilon(delta=1e-5))


def test_dp_step_changes_only_lora_and_keeps_frozen_weights_bit_identical(scorer):
    states, labels = _examples(scorer)
    before = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    accountant = PersistentAccountant()
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 16, 1)
    result = train_adapter(
        scorer, states, labels, local(batch_size=16, learning_rate=1e-2), PrivateTraining(plan, 1.0, accountant)
    )
    assert result.steps == plan.steps == 3
    lora = [n for n, _ in scorer.named_parameters() if "lora_" in n]
    frozen = [n for n, _ in scorer.named_parameters() if "lora_" not in n]
    assert lora and frozen
    for name, param in scorer.named_parameters():
        if name in lora:
            assert not torch.equal(param, before[name]), f"LoRA tensor {name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen tensor {name} changed"
    # hooks and per-sample gradients are gone after training
    assert not any(hasattr(p, "grad_sample") for p in scorer.parameters())
    assert not any(m._forward_hooks for m in scorer.modules())


def test_a_dp_round_is_reproduced_from_its_seed_whatever_torch_drew_before(scorer):
    states, labels = _examples(scorer)
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 16, 1)
    trained = []
    for unrelated_seed in (1, 2, 1):
        scorer.reset_adapter(0)
        torch.manual_seed(unrelated_seed)
        torch.rand(unrelated_seed)  # whatever ran before the round
        private = PrivateTraining(plan, 1.0, PersistentAccountant())
        train_adapter(scorer, states, labels, local(batch_size=16, learning_rate=1e-2, seed=7), private)
        trained.append([p.detach().clone() for p in scorer.trainable_parameters()])
    for first, second in zip(trained[0], trained[1], strict=True):
        torch.testing.assert_close(first, second, rtol=0, atol=0)  # Poisson sample and noise from the seed
    scorer.reset_adapter(0)
    different = local(batch_size=16, learning_rate=1e-2, seed=8)
    train_adapter(scorer, states, labels, different, PrivateTraining(plan, 1.0, PersistentAccountant()))
    assert any(not torch.equal(a, b) for a, b in zip(trained[0], scorer.trainable_parameters(), strict=True))


def test_seeding_dp_sgd_gives_the_draws_of_torch_manual_seed_on_the_cpu():
    torch.manual_seed(5)
    expected = torch.rand(4), torch.randn(3)
    torch.rand(9)
    seed_dp_sgd(5, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(expected, (torch.rand(4), torch.randn(3)), strict=True))


@pytest.mark.parametrize("hooked", ["the whole scorer", "its trainable modules"])
def test_per_sample_gradients_exist_only_for_lora_parameters(scorer, hooked):
    states, labels = _examples(scorer)
    accountant = PersistentAccountant()
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 16, 1)
    optimizer = torch.optim.SGD(scorer.trainable_parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.arange(len(states)), labels.float()), batch_size=16)
    scorer.train()
    module = scorer if hooked == "the whole scorer" else scorer.trainable_modules()
    with dp_sgd(module, optimizer, loader, PrivateTraining(plan, 1.0, accountant)) as (dp_optimizer, dp_loader):
        index, y = next(i for i in dp_loader if len(i[0]))
        batch, mask = scorer.batch([states[i] for i in index.tolist()])
        F.binary_cross_entropy_with_logits(scorer(batch, mask), y).backward()
        with_samples = {n for n, p in scorer.named_parameters() if getattr(p, "grad_sample", None) is not None}
        assert with_samples == {n for n, p in scorer.named_parameters() if "lora_" in n}
        for name, p in scorer.named_parameters():
            if name in with_samples:
                assert p.grad_sample.shape == (len(index), *p.shape)
        dp_optimizer.step()


@pytest.mark.parametrize("hooked", ["the whole scorer", "its trainable modules"])
@pytest.mark.parametrize("top_layers", [0, 1])
def test_per_sample_gradients_equal_each_examples_own_gradient(top_layers, hooked):
    scorer = tiny_scorer(top_layers=top_layers, freeze_a=True)
    with torch.no_grad():
        for p in scorer.trainable_parameters():
            p.normal_(0.0, 0.3)
    texts = ["short", "a much longer prompt about several liked and disliked items", "medium sized prompt"]
    states, labels = scorer.prefix_states(scorer.encode(texts)), torch.tensor([1.0, 0.0, 1.0])
    params = dict((n, p) for n, p in scorer.named_parameters() if p.requires_grad)
    scorer.train()
    expected = []
    for state, y in zip(states, labels, strict=True):
        loss = F.binary_cross_entropy_with_logits(scorer(*scorer.batch([state])), y[None])
        expected.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)))
    module = scorer if hooked == "the whole scorer" else scorer.trainable_modules()
    hooks = GradSampleModule(module, loss_reduction="mean")
    try:
        F.binary_cross_entropy_with_logits(scorer(*scorer.batch(states)), labels).backward()
        for name, p in params.items():
            for i, grads in enumerate(expected):
                torch.testing.assert_close(p.grad_sample[i], grads[name], atol=1e-5, rtol=1e-4)
    finally:
        hooks._close()


@pytest.mark.parametrize("mechanism,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_reported_epsilon_equals_opacus_accountant(scorer, mechanism, cls):
    states, labels = _examples(scorer)
    accountant = PersistentAccountant(mechanism)
    plan = plan_round(RecordDPConfig(noise_multiplier=0.8, accountant=mechanism), 1, len(states), 8, 2)
    train_adapter(scorer, states, labels, local(batch_size=8, epochs=2), PrivateTraining(plan, 1.0, accountant))
    reference = cls()
    reference.history = [(0.8, 1 / 6, 12)]
    assert accountant.history == [(0.8, pytest.approx(1 / 6), 12)]
    assert accountant.epsilon(1e-5) == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-6)


def test_accountant_composes_across_rounds_and_survives_serialisation():
    ledger = PersistentAccountant("rdp", [(1.0, 0.1, 30)])
    restored = PersistentAccountant.from_record(ledger.to_record(), "rdp")
    assert restored.history == ledger.history
    one_round = restored.epsilon(1e-5)
    restored.history.append((1.0, 0.1, 30))
    reference = RDPAccountant()
    reference.history = [(1.0, 0.1, 60)]
    assert restored.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert restored.epsilon(1e-5) > one_round
    with pytest.raises(ValueError, match="uses the 'rdp' accountant; the run asks for 'prv'"):
        PersistentAccountant.from_record(ledger.to_record(), "prv")


def test_noise_is_calibrated_to_the_budget_over_planned_rounds():
    settings = RecordDPConfig(target_epsilon=4.0, target_delta=1e-5)
    plan = plan_round(settings, 3, num_examples=200, batch_size=50, epochs=1)
    assert (plan.sample_rate, plan.steps) == (0.25, 4)
    ledger = PersistentAccountant()
    for _ in range(3):
        assert decline_reason(settings, plan, ledger) is None
        ledger.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps))
    assert 3.9 < ledger.epsilon(1e-5) <= 4.0 * 1.001
    reason = decline_reason(settings, plan, ledger)
    assert reason is not None and "target-epsilon 4" in reason


def test_planned_rounds_buy_less_noise_and_the_budget_stops_extra_rounds():
    """With partial participation a client plans for fewer rounds than the run has: less
    noise per round, and a round beyond the plan is declined, never over budget."""
    every_round = resolve_config("smoke", overrides={"num-server-rounds": 5, "target-epsilon": 4.0})
    two_rounds = every_round.replace(dp_planned_rounds=2)
    assert (every_round.planned_dp_rounds, two_rounds.planned_dp_rounds) == (5, 2)
    plans = [plan_round(c.record_dp, c.planned_dp_rounds, 200, 50, 1) for c in (every_round, two_rounds)]
    assert plans[1].noise_multiplier < plans[0].noise_multiplier
    settings, plan, ledger = two_rounds.record_dp, plans[1], PersistentAccountant()
    for _ in range(2):
        assert decline_reason(settings, plan, ledger) is None
        ledger.history.append((plan.noise_multiplier, plan.sample_rate, plan.steps))
    assert 3.9 < ledger.epsilon(1e-5) <= 4.0 * 1.001
    assert "target-epsilon 4" in decline_reason(settings, plan, ledger)


def test_dp_run_learns_planted_structure(tmp_path):
    """Record-level DP at epsilon 8 on a dataset whose items are either always liked
    or never liked: the adapter must beat chance (0.5) by at least 0.25 AUC."""
    inter, items = write_planted_dataset(tmp_path, users=60, per_user=14)
    data = load_interaction_data(str(inter), str(items))
    split = split_examples(data, history_length=2)
    titles = data.titles
    train = [ex for exs in split.train.values() for ex in exs]
    test = [ex for exs in split.test.values() for ex in exs]
    scorer = tiny_scorer()
    encode = lambda exs: scorer.encode([render_preference_prompt(ex, titles) for ex in exs])  # noqa: E731
    states = scorer.prefix_states(encode(train))
    labels = torch.tensor([ex.label for ex in train])
    before = roc_auc([ex.label for ex in test], scorer.score(encode(test)).numpy())
    settings = RecordDPConfig(target_epsilon=8.0, target_delta=1e-5)
    plan = plan_round(settings, 1, len(states), batch_size=64, epochs=4)
    accountant = PersistentAccountant()
    train_adapter(
        scorer,
        states,
        labels,
        local(epochs=4, batch_size=64, physical_batch_size=64, learning_rate=5e-2),
        PrivateTraining(plan, 1.0, accountant),
    )
    auc = roc_auc([ex.label for ex in test], scorer.score(encode(test)).numpy())
    assert accountant.epsilon(1e-5) <= 8.0 * 1.001
    assert auc >= 0.75, f"DP run reached AUC {auc:.3f} (before training {before:.3f})"


def test_empty_poisson_batches_still_step(scorer):
    states, labels = _examples(scorer, n=30)
    accountant = PersistentAccountant()
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 1, 1)  # q = 1/30: many empty batches
    result = train_adapter(scorer, states, labels, local(batch_size=1), PrivateTraining(plan, 1.0, accountant))
    assert result.steps == 30 and accountant.steps == 30
    assert math.isfinite(accountant.epsilon(1e-5))


def test_batch_memory_manager_splits_logical_batches(scorer, monkeypatch):
    states, labels = _examples(scorer, n=64)
    accountant = PersistentAccountant()
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 32, 1)
    forward, sizes = type(scorer).forward, []

    def counted(self, batch, mask, signals=None):
        sizes.append(len(batch))
        return forward(self, batch, mask, signals)

    monkeypatch.setattr(type(scorer), "forward", counted)
    result = train_adapter(
        scorer,
        states,
        labels,
        local(batch_size=32, physical_batch_size=8),
        PrivateTraining(plan, 1.0, accountant),
    )
    assert result.steps == plan.steps == accountant.steps == 2
    assert max(sizes) <= 8 and sum(sizes) == result.examples > 0  # every example went through a physical batch
    assert len(sizes) > result.steps  # of at most 8: several per optimizer step


def test_frozen_a_factors_stay_fixed_and_get_no_per_sample_gradients():
    scorer = tiny_scorer(freeze_a=True)
    states, labels = _examples(scorer)
    before = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 16, 1)
    train_adapter(
        scorer,
        states,
        labels,
        local(batch_size=16, learning_rate=1e-2),
        PrivateTraining(plan, 1.0, PersistentAccountant()),
    )
    for name, param in scorer.named_parameters():
        assert torch.equal(param, before[name]) == ("lora_B" not in name), name


def test_audit_flags_a_client_over_budget_a_ledger_that_lost_steps_and_another_delta():
    def line(round_, ledger, delta=1e-5):
        accountant = PersistentAccountant("rdp", [tuple(entry) for entry in ledger])
        return {"round": round_, "client": "c", "epsilon": accountant.epsilon(1e-5), "delta": delta, "ledger": ledger}

    merged = [line(1, [[1.0, 0.1, 10]]), line(2, [[1.0, 0.1, 20]])]  # Opacus merged round 2 into the entry
    (ok,) = audit_ledgers(merged, "rdp", 1e-5, target_epsilon=100.0)
    assert ok.problems == () and ok.releases == 1 and ok.recomputed == pytest.approx(merged[-1]["epsilon"])
    (over,) = audit_ledgers(merged, "rdp", 1e-5, target_epsilon=0.5 * ok.recomputed)
    assert over.problems == (f"epsilon {ok.recomputed:.4f} > target-epsilon {0.5 * ok.recomputed:g}",)
    shrunk = [line(1, [[1.0, 0.1, 10]]), line(2, [[1.0, 0.1, 5], [2.0, 0.1, 5]], delta=1e-6)]
    (bad,) = audit_ledgers(shrunk, "rdp", 1e-5, target_epsilon=100.0)
    assert bad.problems == (
        "round 2: the ledger lost steps it reported before",
        "round 2: delta 1e-06 is not the run's 1e-05",
    )


@pytest.mark.parametrize("secure_noise", [False, True])
def test_secure_noise_cannot_be_recomputed_from_the_run_seed(secure_noise):
    """Without secure noise two trainings from the same seed are identical (the noise is
    a function of the configuration); with it they differ, and Opacus samples securely.
    """
    trained = []
    for _ in range(2):
        scorer = tiny_scorer()
        scorer.reset_adapter(7)
        states, labels = _examples(scorer)
        plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 16, 1)
        private = PrivateTraining(plan, 1.0, PersistentAccountant(), secure_noise)
        train_adapter(scorer, states, labels, local(batch_size=16, learning_rate=1e-2), private)
        trained.append({n: p.detach().clone() for n, p in scorer.named_parameters() if p.requires_grad})
    same = all(torch.equal(trained[0][n], trained[1][n]) for n in trained[0])
    assert same is not secure_noise
    engine = SecureNoiseEngine(accountant="rdp")
    assert engine.secure_mode and engine.secure_rng is not None
    assert not torch.equal(torch.normal(0, 1, (8,), generator=engine.secure_rng), torch.normal(0, 1, (8,)))


def test_reproducible_noise_is_noted_once_per_process_not_every_round():
    """Opacus warns on every engine it builds without secure mode; a round builds one."""
    model = torch.nn.Linear(4, 1)
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=8)
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 3, 16, 8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _note_reproducible_noise.cache_clear()  # as in a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # three rounds
            with dp_sgd(model, optimizer, loader, PrivateTraining(plan, 1.0, PersistentAccountant())):
                pass
    messages = [str(w.message) for w in caught]
    assert messages.count(REPRODUCIBLE_NOISE_NOTICE) == 1
    assert not any("Secure RNG turned off" in m for m in messages)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_secure_noise_is_drawn_where_the_gradients_are_and_the_sample_on_the_cpu(device):
    """Opacus hands its one secure generator to the sampler (CPU) and the noise (the
    parameters' device); fedrec's engine gives the noise its own generator on that device.
    """
    model = torch.nn.Linear(4, 1).to(device)
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, 32, 8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private = PrivateTraining(plan, 1.0, PersistentAccountant(), secure_noise=True)
    before = model.weight.detach().clone()
    with dp_sgd(model, optimizer, loader, private) as (dp_optimizer, dp_loader):
        assert dp_optimizer.generator.device == model.weight.device
        assert dp_loader.batch_sampler.generator.device == torch.device("cpu")
        assert dp_optimizer.generator is not dp_loader.batch_sampler.generator
        for x, y in dp_loader:
            F.mse_loss(model(x.to(device)), y.to(device)).backward()
            dp_optimizer.step()
            dp_optimizer.zero_grad()
    assert not torch.equal(model.weight.detach(), before)
    assert len(private.accountant.history) == 1 and private.accountant.history[0][2] == plan.steps
