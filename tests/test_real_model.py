"""The bundled SmolLM2-135M and MovieLens-100K: a forward pass and one DP step."""

import subprocess
import sys

import pytest
import torch

from fedrec.config import DataConfig, RecordDPConfig
from fedrec.models.backbone import bundled_smollm2_dir, load_backbone
from fedrec.models.lora import LoraSettings
from fedrec.models.scorer import Scorer
from fedrec.privacy.ledger import PersistentAccountant
from fedrec.privacy.record_level import PrivateTraining, plan_round
from fedrec.tasks.preference.dataset import load_federated_data
from fedrec.tasks.preference.prompt import PREFERENCE_QUESTION
from fedrec.tasks.training import train_adapter
from tests.conftest import local

pytestmark = pytest.mark.real


def test_concurrent_first_loads_build_one_valid_cache(tmp_path):
    """Two processes convert the GGUF at once into an empty cache: one converts, the
    other waits on the lock, and both load the same weights."""
    code = "from fedrec.models.backbone import load_backbone; print(load_backbone('smollm2').fingerprint)"
    env = {"FEDREC_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    prints = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert prints[0] == prints[1]
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert entries == ["smollm2-135m-instruct-q4_1", "smollm2-135m-instruct-q4_1.lock"]
    assert (tmp_path / "smollm2-135m-instruct-q4_1" / "model.safetensors").exists()


def test_smollm2_forward_and_one_dp_step():
    assert (bundled_smollm2_dir() / "config.json").exists()
    backbone = load_backbone("smollm2")
    assert sum(p.numel() for p in backbone.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    scorer = Scorer(
        backbone, LoraSettings(top_layers=2), PREFERENCE_QUESTION, max_length=256, compute_dtype=torch.bfloat16
    )
    data = load_federated_data(DataConfig(history_length=10, train_examples_per_user=1), 42, 300, 4)
    examples = data.train_examples(0)[:32]
    tokens = scorer.encode(data.prompts(examples))
    assert scorer.tokenizer.decode(tokens[0]).endswith("Answer Yes or No.<|im_end|>\n<|im_start|>assistant\n")
    scores = scorer.score(tokens)
    assert scores.shape == (32,) and torch.isfinite(scores).all()
    frozen = {n: p.detach().clone() for n, p in scorer.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in scorer.named_parameters() if "lora_" in n}
    states = scorer.prefix_states(tokens)
    plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), 32, 1)
    accountant = PersistentAccountant()
    result = train_adapter(
        scorer,
        states,
        torch.tensor([ex.label for ex in examples]),
        local(batch_size=32, physical_batch_size=16),
        PrivateTraining(plan, 1.0, accountant),
    )
    assert result.steps == 1 and accountant.epsilon(1e-5) > 0
    for name, param in scorer.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name])
        else:
            assert not torch.equal(param, lora[name])
