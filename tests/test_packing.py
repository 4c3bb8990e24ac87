"""Packed ranking groups (one row per history and its candidates): the scores and the
per-sample gradients equal those of separate prompts, soft tokens included."""

import pytest
import torch
from opacus import GradSampleModule

from fedrec.config import RecordDPConfig
from fedrec.models.packing import PADDING, group_prefix_lengths, pack_groups
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import PrivateTraining, group_grad_samples, plan_round
from fedrec.tasks.ranking.training import ranking_loss
from fedrec.tasks.training import train_adapter
from tests.conftest import local, tiny_scorer
from tests.test_soft_tokens import DIM, hybrid_scorer

SIZE = 4


def _groups(scorer, count=3, size=SIZE):
    """Prompts of ``count`` histories of different lengths, each with ``size`` candidates."""
    texts = [f"history {g} " + "seen " * g + f"candidate {m} of {m * 7}" for g in range(count) for m in range(size)]
    tokens = scorer.encode(texts)
    return tokens, scorer.prefix_states(tokens)


def _randomized(scorer):
    with torch.no_grad():
        for p in scorer.trainable_parameters():
            p.normal_(0.0, 0.3)
    return scorer


def test_packing_lays_out_the_prefix_once_and_each_members_suffix():
    states = [torch.arange(n, dtype=torch.float32)[:, None].expand(n, 2) + 10 * i for i, n in enumerate((5, 6, 4))]
    packed = pack_groups(states, 3, [3])
    assert packed.states[0, :, 0].tolist() == [0, 1, 2, 3, 4, 13, 14, 15, 23]
    assert packed.positions[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 3]
    assert packed.segments[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3]
    assert packed.answers[0].tolist() == [4, 7, 8]
    two = pack_groups(states[:2] * 2, 2, [3, 4])
    assert two.segments[1].tolist() == [0, 0, 0, 0, 1, 2, 2, PADDING]  # padded to the longer row
    with pytest.raises(ValueError, match="without a token of its own"):
        pack_groups(states, 3, [4])
    with pytest.raises(ValueError, match="groups of 2"):
        pack_groups(states, 2, [3])


def test_group_prefix_lengths_leave_every_member_a_token():
    tokens = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3], [7, 8], [7, 9]]
    assert group_prefix_lengths(tokens[:3], 3) == [2]
    assert group_prefix_lengths(tokens[:2] + tokens[3:], 2) == [3, 1]
    assert group_prefix_lengths([[1, 2], [3, 4]], 2) is None


@pytest.mark.parametrize("top_layers", [0, 1])
def test_packed_scores_equal_separate_prompts(top_layers):
    scorer = _randomized(tiny_scorer(top_layers=top_layers))
    assert scorer.packs_groups
    tokens, states = _groups(scorer)
    separate = scorer(*scorer.batch(states)).reshape(3, SIZE)
    packed = scorer.forward_groups(pack_groups(states, SIZE, group_prefix_lengths(tokens, SIZE)))
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-4)


def test_packed_soft_tokens_equal_separate_prompts_and_matter():
    scorer = _randomized(hybrid_scorer())
    tokens, states = _groups(scorer)
    signals = torch.randn(len(states), 3, DIM)
    packed = pack_groups(states, SIZE, group_prefix_lengths(tokens, SIZE))
    scores = scorer.forward_groups(packed, signals.reshape(3, SIZE, 3, DIM))
    separate = scorer(*scorer.batch(states), signals).reshape(3, SIZE)
    torch.testing.assert_close(scores, separate, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(scores, scorer.forward_groups(packed), atol=1e-3)


def test_packed_per_sample_gradients_are_each_groups_own_gradient():
    scorer = _randomized(hybrid_scorer())
    tokens, states = _groups(scorer)
    signals = torch.randn(len(states), 3, DIM)
    params = {n: p for n, p in scorer.named_parameters() if p.requires_grad}
    scorer.train()
    hooked = GradSampleModule(scorer, loss_reduction="mean")
    try:
        ranking_loss(scorer(*scorer.batch(states), signals).reshape(3, SIZE), None).backward()
        group_grad_samples(list(params.values()), SIZE)
        expected = {n: p.grad_sample.clone() for n, p in params.items()}
        for p in params.values():
            p.grad_sample = None
        packed = pack_groups(states, SIZE, group_prefix_lengths(tokens, SIZE))
        ranking_loss(scorer.forward_groups(packed, signals.reshape(3, SIZE, 3, DIM)), None).backward()
        for name, p in params.items():
            assert p.grad_sample.shape == (3, *p.shape), name
            torch.testing.assert_close(p.grad_sample, expected[name], atol=1e-5, rtol=1e-4)
    finally:
        hooked._close()


def test_dp_training_of_packed_groups_accounts_groups_and_changes_only_lora():
    scorer = tiny_scorer()
    tokens, states = _groups(scorer, 24)
    before = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, 24, 8, 1)
    ledger = PersistentAccountant()
    training = local(batch_size=8, physical_batch_size=12, learning_rate=1e-2)
    training = type(training)(training.training, ranking_loss, group_size=SIZE)
    shared = group_prefix_lengths(tokens, SIZE)
    result = train_adapter(scorer, states, torch.zeros(24), training, PrivateTraining(plan, 1.0, ledger), None, shared)
    assert ledger.history == [(1.0, pytest.approx(1 / 3), 3)] and result.steps == 3 and result.loss == result.loss
    for name, p in scorer.named_parameters():
        assert torch.equal(p, before[name]) == ("lora_" not in name), name
    with pytest.raises(ValueError, match="shared prefixes"):
        train_adapter(scorer, states, torch.zeros(24), training, None, None, shared[:-1])
