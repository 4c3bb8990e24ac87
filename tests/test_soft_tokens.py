"""Collaborative soft tokens (llm-input = 'hybrid'): the projector's tokens change the
scores, zero signals give the text-only scores, only LoRA and the projector train, and
Opacus computes per-sample gradients for both."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch.utils.data import DataLoader, TensorDataset

from fedrec.config import RecordDPConfig
from fedrec.models.adapter import adapter_to_arrays, load_adapter_arrays, load_adapter_folder, save_adapter
from fedrec.models.backbone import load_backbone
from fedrec.models.lora import LoraSettings
from fedrec.models.scorer import Scorer
from fedrec.models.soft_tokens import add_at_slots
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import PrivateTraining, dp_sgd, plan_round
from fedrec.tasks.collaborative.folded import FoldedInTables
from fedrec.tasks.metrics import roc_auc
from fedrec.tasks.preference.examples import PreferenceExample
from fedrec.tasks.preference.prompt import HYBRID_PREFERENCE_QUESTION
from fedrec.tasks.preference.signals import CollaborativeSignals
from fedrec.tasks.training import train_adapter
from tests.conftest import local, tiny_scorer

DIM = 6


def hybrid_scorer(top_layers: int = 1, seed: int = 0) -> Scorer:
    settings = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"), top_layers=top_layers, seed=seed)
    return Scorer(load_backbone("tiny-llama"), settings, HYBRID_PREFERENCE_QUESTION, max_length=96, signal_dim=DIM)


def _prompts(scorer: Scorer, n: int = 12) -> list[list[int]]:
    return scorer.encode([f"history {i} then candidate {i % 5}" for i in range(n)])


def _nonzero_projector(scorer: Scorer) -> None:
    with torch.no_grad():
        scorer.projector.outer.weight.normal_(0.0, 0.5)


def test_slots_sit_at_the_stated_offsets_from_the_end():
    scorer = hybrid_scorer()
    tokens = _prompts(scorer, 2)
    offsets = scorer.prompt.slot_offsets
    assert len(offsets) == 3 and offsets[0] > offsets[1] > offsets[2] > len(scorer.prompt.tail_ids)
    for ids in tokens:
        for offset, slot in zip(offsets, scorer.prompt.slot_ids, strict=True):
            assert ids[-offset] == slot[-1]
    states = torch.zeros(2, 10, 3)
    added = add_at_slots(states, torch.ones(2, 2, 3), (4, 2))
    assert added[:, 6].eq(1).all() and added[:, 8].eq(1).all() and added.sum() == 2 * 2 * 3


@pytest.mark.parametrize("top_layers", [0, 1])
def test_soft_tokens_change_scores_and_zero_signals_give_the_text_scores(top_layers):
    scorer = hybrid_scorer(top_layers)
    tokens = _prompts(scorer)
    signals = torch.randn(len(tokens), 3, DIM)
    text = scorer.score(tokens)
    fresh = scorer.score(tokens, signals=signals)  # zero-initialised output layer: no change yet
    torch.testing.assert_close(fresh, text)
    _nonzero_projector(scorer)
    hybrid = scorer.score(tokens, signals=signals)
    assert (hybrid - text).abs().max() > 1e-3
    torch.testing.assert_close(scorer.score(tokens, signals=torch.zeros_like(signals)), text, atol=1e-6, rtol=0)
    # the candidate path takes the same signals (several prompts sharing a prefix)
    torch.testing.assert_close(scorer.score_candidates(tokens, signals=signals), hybrid, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_lora_and_projector_and_training_changes_both():
    scorer = hybrid_scorer()
    _nonzero_projector(scorer)
    tokens = _prompts(scorer, 24)
    states, labels = scorer.prefix_states(tokens), torch.tensor([i % 2 for i in range(24)])
    signals = torch.randn(24, 3, DIM)
    before = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    trainable = {n for n, p in scorer.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if "lora_" in n or n.startswith("projector.")}
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, 24, 8, 1)
    train_adapter(
        scorer,
        states,
        labels,
        local(batch_size=8, learning_rate=1e-2),
        PrivateTraining(plan, 1.0, PersistentAccountant()),
        signals,
    )
    for name, param in scorer.named_parameters():
        changed = not torch.equal(param, before[name])
        trains = "lora_B" in name or name.startswith("projector.")
        assert changed == trains or "lora_A" in name, f"{name}: changed={changed}"


def test_opacus_per_sample_gradients_exist_for_lora_and_projector_and_are_each_examples_own():
    scorer = hybrid_scorer()
    _nonzero_projector(scorer)
    tokens = _prompts(scorer, 3)
    states, labels, signals = scorer.prefix_states(tokens), torch.tensor([1.0, 0.0, 1.0]), torch.randn(3, 3, DIM)
    params = {n: p for n, p in scorer.named_parameters() if p.requires_grad}
    scorer.train()
    expected = []
    for i, y in enumerate(labels):
        loss = F.binary_cross_entropy_with_logits(scorer(*scorer.batch([states[i]]), signals[i : i + 1]), y[None])
        expected.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)))
    hooked = GradSampleModule(scorer, loss_reduction="mean")
    try:
        F.binary_cross_entropy_with_logits(scorer(*scorer.batch(states), signals), labels).backward()
        with_samples = {n for n, p in scorer.named_parameters() if getattr(p, "grad_sample", None) is not None}
        assert with_samples == set(params)
        assert any(n.startswith("projector.") for n in with_samples)
        for name, p in params.items():
            for i, grads in enumerate(expected):
                torch.testing.assert_close(p.grad_sample[i], grads[name], atol=1e-5, rtol=1e-4)
    finally:
        hooked._close()


def test_dp_sgd_hooks_the_projector():
    scorer = hybrid_scorer()
    tokens = _prompts(scorer, 16)
    states, labels, signals = scorer.prefix_states(tokens), torch.ones(16), torch.randn(16, 3, DIM)
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, 16, 8, 1)
    optimizer = torch.optim.SGD(scorer.trainable_parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.arange(16), labels), batch_size=8)
    scorer.train()
    with dp_sgd(scorer, optimizer, loader, PrivateTraining(plan, 1.0, PersistentAccountant())) as (dp_opt, dp_loader):
        index, y = next(i for i in dp_loader if len(i[0]))
        batch, mask = scorer.batch([states[i] for i in index.tolist()])
        F.binary_cross_entropy_with_logits(scorer(batch, mask, signals[index]), y).backward()
        for p in scorer.projector.parameters():
            assert p.grad_sample.shape == (len(index), *p.shape)
        dp_opt.step()
    scorer.eval()


def test_projector_travels_and_saves_with_the_adapter(tmp_path):
    source, target = hybrid_scorer(), hybrid_scorer(seed=1)
    _nonzero_projector(source)
    arrays = adapter_to_arrays(source)
    assert any(name.startswith("soft_tokens.") for name in arrays)
    load_adapter_arrays(target, arrays)
    torch.testing.assert_close(target.projector.outer.weight, source.projector.outer.weight)
    with torch.no_grad():
        target.projector.outer.weight.zero_()
    load_adapter_folder(target, save_adapter(source, tmp_path / "adapter"))
    torch.testing.assert_close(target.projector.outer.weight, source.projector.outer.weight)


def test_signals_without_a_projector_and_slots_for_an_encoder_are_refused():
    text = Scorer(load_backbone("tiny-llama"), LoraSettings(rank=2), HYBRID_PREFERENCE_QUESTION, max_length=96)
    states, mask = text.batch(text.prefix_states(_prompts(text, 2)))
    with pytest.raises(ValueError, match="without a projector"):
        text(states, mask, torch.zeros(2, 3, DIM))
    with pytest.raises(Exception, match="causal LM"):
        Scorer(
            load_backbone("tiny-bert"),
            LoraSettings(rank=2, target_modules=("query", "value")),
            HYBRID_PREFERENCE_QUESTION,
            max_length=96,
            signal_dim=DIM,
        )


def test_the_match_token_reads_out_the_collaborative_score():
    users, items = ["a", "b"], [str(i) for i in range(6)]
    rng = np.random.default_rng(0)
    tables = {"mf.item_embeddings": rng.standard_normal((6, 4)).astype(np.float32) * 3}
    tables["mf.item_biases"] = rng.standard_normal(6).astype(np.float32)
    likes = pd.DataFrame({"user": ["a", "a", "b"], "item": ["0", "1", "2"], "rating": [5.0, 4.0, 5.0]})
    folded = FoldedInTables(tables, pd.Series(items), likes, 3.0, users, "tables")
    signals = CollaborativeSignals(folded)
    examples = [PreferenceExample(u, i, 0, ()) for u in users for i in items]
    vectors = signals.of(examples)
    assert vectors.shape == (12, 3, 5) and torch.all(vectors[:, 0, -1] == 0)
    item_scale = float(np.sqrt(np.mean(tables["mf.item_embeddings"] ** 2)))
    bias_scale = float(np.sqrt(np.mean(tables["mf.item_biases"] ** 2)))
    readout = vectors[:, 2, :-1].sum(1) * item_scale**2 + vectors[:, 2, -1] * bias_scale
    expected = torch.cat([torch.tensor(folded.catalog_scores(u), dtype=torch.float32) for u in users])
    torch.testing.assert_close(readout, expected, atol=1e-4, rtol=1e-4)


def _planted(users: range, items: range) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Liked iff the user's and the item's groups match (visible to the collaborative
    signals only) and the item is good (visible in its title only)."""
    texts, signals, labels = [], [], []
    for u in users:
        for i in items:
            user_group, item_group, good = u % 2 * 2 - 1, i % 2 * 2 - 1, (i // 2) % 2 == 0
            texts.append(f"Will the user like the {'good' if good else 'bad'} film number {i}?")
            user, item = [user_group, 0.0, 0.0], [item_group, 0.0, 0.0]
            signals.append([user, item, [user_group * item_group, 0.0, 0.0]])
            labels.append(int(user_group == item_group and good))
    return texts, torch.tensor(signals, dtype=torch.float32), torch.tensor(labels)


def test_on_planted_structure_the_hybrid_beats_text_alone_and_the_collaborative_score():
    train_texts, train_signals, train_labels = _planted(range(12), range(16))
    test_texts, test_signals, test_labels = _planted(range(12, 20), range(16, 32))
    settings = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"), top_layers=1)
    scorer = Scorer(load_backbone("tiny-llama"), settings, HYBRID_PREFERENCE_QUESTION, max_length=96, signal_dim=3)
    states = scorer.prefix_states(scorer.encode(train_texts))
    training = local(epochs=20, batch_size=32, physical_batch_size=32, learning_rate=5e-2)
    train_adapter(scorer, states, train_labels, training, signals=train_signals)
    tokens = scorer.encode(test_texts)
    hybrid = roc_auc(test_labels.numpy(), scorer.score(tokens, signals=test_signals).numpy())
    collaborative = roc_auc(test_labels.numpy(), test_signals[:, 2, 0].numpy())  # the MF score: group match
    text_scorer = tiny_scorer(top_layers=1)  # the same backbone and LoRA reading the text alone
    train_adapter(text_scorer, text_scorer.prefix_states(text_scorer.encode(train_texts)), train_labels, training)
    text = roc_auc(test_labels.numpy(), text_scorer.score(text_scorer.encode(test_texts)).numpy())
    assert collaborative == pytest.approx(5 / 6)  # ties with matched bad items, beats the rest
    assert hybrid >= max(text, collaborative) + 0.1, (hybrid, text, collaborative)
