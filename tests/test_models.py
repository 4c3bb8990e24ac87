import json

import pytest
import torch
from flwr.app import ArrayRecord
from peft import PeftModel, get_peft_model_state_dict

from fedrec.files import replacing, write_atomic
from fedrec.models import split_check
from fedrec.models.adapter import (
    adapter_state,
    adapter_to_arrays,
    load_adapter_arrays,
    load_adapter_folder,
    save_adapter,
)
from fedrec.models.backbone import BackboneError, load_backbone, weights_fingerprint
from fedrec.models.lora import LoraSettings
from fedrec.models.packing import group_prefix_lengths, pack_groups
from fedrec.models.precision import native_bfloat16, resolve_compute_dtype
from fedrec.models.prefix_cache import PREFIX_CACHE, shared_prefix_groups
from fedrec.models.prefix_store import PrefixStore, cached_states
from fedrec.models.registry import shared_scorer
from fedrec.models.split import attend_to_self
from fedrec.models.split_check import CHECKS_FILE, full_forward_score
from fedrec.models.wire import AdapterMismatchError
from fedrec.tasks.preference.prompt import PREFERENCE_QUESTION
from tests.conftest import tiny_scorer

PROMPTS = ["A user rated these items: good film 2: liked. Will the user like bad film 3?", "short one"]


def _perturb(scorer, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in scorer.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-bert"])
@pytest.mark.parametrize("top_layers", [0, 1])
def test_split_forward_equals_full_forward(spec, top_layers):
    scorer = tiny_scorer(top_layers=top_layers, spec=spec)
    _perturb(scorer)
    tokens = scorer.encode(PROMPTS)
    split = scorer.score(tokens)
    full = torch.tensor([full_forward_score(scorer, t) for t in tokens])
    torch.testing.assert_close(split, full, atol=1e-4, rtol=1e-4)
    assert scorer.split_layer == (1 if top_layers else 0)


def _counting_split_errors(monkeypatch) -> list[int]:
    """Count the self-check's forwards (each call compares split and full scores)."""
    calls: list[int] = []
    real = split_check.split_error

    def counted(scorer, token_lists):
        calls.append(1)
        return real(scorer, token_lists)

    monkeypatch.setattr(split_check, "split_error", counted)
    return calls


def test_a_passed_split_check_is_remembered_for_the_same_weights_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path))
    calls = _counting_split_errors(monkeypatch)
    first = tiny_scorer()
    assert len(calls) == 2  # the last-position top layer, then the whole split
    assert list(json.loads((tmp_path / CHECKS_FILE).read_text()).values()) == [True]
    again = tiny_scorer()
    assert len(calls) == 2 and again.split.last_position_top_layer
    tokens = first.encode(PROMPTS)
    torch.testing.assert_close(again.score(tokens), first.score(tokens))
    tiny_scorer(rank=8)  # other LoRA settings: checked again
    tiny_scorer(spec="tiny-bert")  # other weights and kind: checked again (no last-position path)
    assert len(calls) == 5
    assert len(json.loads((tmp_path / CHECKS_FILE).read_text())) == 3


def test_a_remembered_fallback_applies_and_an_unreadable_file_is_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path))
    calls = _counting_split_errors(monkeypatch)
    tiny_scorer()
    path = tmp_path / CHECKS_FILE
    path.write_text(json.dumps(dict.fromkeys(json.loads(path.read_text()), False)))
    assert not tiny_scorer().split.last_position_top_layer  # the remembered fallback, not rechecked
    assert len(calls) == 2
    path.write_text("{not json")
    assert tiny_scorer().split.last_position_top_layer
    assert len(calls) == 4 and list(json.loads(path.read_text()).values()) == [True]


@pytest.mark.parametrize("top_layers", [0, 1, 2])
def test_last_position_top_layer_equals_the_full_top_layer(top_layers):
    scorer = tiny_scorer(top_layers=top_layers)
    assert scorer.split.last_position_top_layer
    _perturb(scorer)
    states = scorer.prefix_states(scorer.encode(PROMPTS))
    batch, mask = scorer.batch(states)
    fast = scorer(batch, mask)
    scorer.split.last_position_top_layer = False
    torch.testing.assert_close(fast, scorer(batch, mask), atol=1e-5, rtol=1e-5)


def test_attend_to_self_opens_only_the_diagonal():
    allowed = torch.tensor([[False, False, False], [True, True, False], [True, True, True]])[None, None]
    opened = attend_to_self(allowed)
    assert opened[0, 0, 0].tolist() == [True, False, False]
    assert torch.equal(opened[0, 0, 1:], allowed[0, 0, 1:])
    additive = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    assert torch.equal(attend_to_self(additive) == 0, opened)
    assert attend_to_self(None) is None


def _attention_masks_of_trained_layers(scorer, run):
    """The attention masks the layers above the split receive while ``run()`` scores."""
    masks = []
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda _m, _a, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True
        )
        for layer in scorer.split.layers[scorer.split_layer :]
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return masks


def _padded_prompts(scorer):
    texts = [f"history {g} " + "seen " * 3 * g + f"candidate {m}" for g in range(3) for m in range(2)]
    tokens = scorer.encode(texts)
    return tokens, scorer.prefix_states(tokens)


@pytest.mark.parametrize("path", ["last position", "every position", "packed"])
def test_no_query_in_the_trained_layers_is_fully_masked(path):
    """Left padding (and packing) leave queries that may see no key; every one of them
    must see its own, or fused CUDA attention can turn their gradients non-finite.
    """
    scorer = tiny_scorer(top_layers=1)
    scorer.split.last_position_top_layer = path != "every position"
    tokens, states = _padded_prompts(scorer)
    if path == "packed":
        masks = _attention_masks_of_trained_layers(
            scorer, lambda: scorer.forward_groups(pack_groups(states, 2, group_prefix_lengths(tokens, 2)))
        )
    else:
        batch, mask = scorer.batch(states)
        assert not mask.all()  # the batch is padded
        masks = _attention_masks_of_trained_layers(scorer, lambda: scorer(batch, mask))
    assert masks and all(m is not None for m in masks)
    for m in masks:
        allowed = m if m.dtype == torch.bool else m == 0
        assert allowed.any(-1).all()


def test_the_trained_layers_give_real_tokens_what_the_backbones_own_mask_gives():
    scorer = tiny_scorer(top_layers=1)
    _perturb(scorer)
    batch, mask = scorer.batch(_padded_prompts(scorer)[1])
    split = scorer.split
    own = split.tail(inputs_embeds=batch, attention_mask=mask, position_ids=split.kind.positions(mask))
    real = mask.bool()
    torch.testing.assert_close(split.hidden(batch, mask)[real], own.last_hidden_state[real], atol=1e-6, rtol=1e-5)


def test_shared_prefix_groups():
    lists = [[1, 2, 3, 4, 9], [5, 6], [1, 2, 3, 4, 8, 7], [1, 2, 3, 5], [1, 2, 3, 4]]
    groups = shared_prefix_groups(lists, min_shared=4)
    assert sorted((n, sorted(m)) for n, m in groups) == [(2, [1]), (4, [0, 2]), (4, [3]), (4, [4])]
    groups = shared_prefix_groups(lists, min_shared=3)  # [1, 2, 3, 4] keeps one token of its own
    assert sorted((n, sorted(m)) for n, m in groups) == [(2, [1]), (3, [0, 2, 3, 4])]
    assert sorted(m for _, ms in shared_prefix_groups(lists, min_shared=None) for m in ms) == [0, 1, 2, 3, 4]
    assert all(n < min(len(lists[i]) for i in m) for n, m in groups if len(m) > 1)


def test_shared_prefixes_give_the_same_states_as_separate_prompts():
    scorer = tiny_scorer(top_layers=1)
    histories = ("liked: alpha beta gamma delta; disliked: epsilon zeta eta.", "liked: theta iota; disliked: kappa.")
    # two groups whose suffixes of unequal lengths share batches (they run sorted by length)
    texts = [
        f"{h} Will the user like item {k}{' x' * (k * (i + 1))}?" for i, h in enumerate(histories) for k in range(5)
    ]
    tokens = scorer.encode([*texts, "a lone prompt", "b"])
    assert sorted(len(m) for _, m in shared_prefix_groups(tokens, 8) if len(m) > 1) == [5, 5]
    shared = scorer.prefix_states(tokens, batch_size=3, min_shared_tokens=8)
    for t in tokens:
        PREFIX_CACHE.drop(scorer.cache_key(t))
    separate = scorer.prefix_states(tokens, min_shared_tokens=10**6)
    for a, b, t in zip(shared, separate, tokens, strict=True):
        assert a.shape == b.shape and a.shape[0] == len(t)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lora_only_on_top_layers():
    scorer = tiny_scorer(top_layers=1)
    names = [n for n, p in scorer.named_parameters() if p.requires_grad]
    assert names and all("layers.1." in n and "lora_" in n for n in names)


def test_causal_score_is_yes_minus_no_logit(scorer):
    tokens = scorer.encode(PROMPTS[:1])[0]
    logits = scorer.peft(input_ids=torch.tensor([tokens])).logits[0, -1]
    yes, no = scorer.prompt.answer_ids.tolist()
    assert full_forward_score(scorer, tokens) == pytest.approx(float(logits[yes] - logits[no]), abs=1e-5)


def test_prompt_is_truncated_from_the_oldest_content(scorer):
    long = " ".join(f"word{i}" for i in range(500)) + " final question"
    tokens = scorer.encode([long])[0]
    assert len(tokens) == scorer.max_length
    assert scorer.tokenizer.decode(tokens).rstrip().endswith("final question answer :")


def test_adapter_round_trip_arrays_peft_folder(tmp_path):
    source = tiny_scorer()
    _perturb(source)
    tokens = source.encode(PROMPTS)
    expected = source.score(tokens)
    arrays = adapter_to_arrays(source)
    assert set(arrays.keys()) == set(adapter_state(source))
    assert all("lora_" in k for k in arrays.keys())

    target = tiny_scorer()
    load_adapter_arrays(target, arrays)
    torch.testing.assert_close(target.score(tokens), expected)
    peft_state = get_peft_model_state_dict(target.peft)
    for name, tensor in arrays.to_torch_state_dict().items():
        torch.testing.assert_close(peft_state[name], tensor)  # loaded in place, under peft's names

    folder = save_adapter(target, tmp_path / "adapter")
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
    fresh = tiny_scorer()
    load_adapter_folder(fresh, folder)
    torch.testing.assert_close(fresh.score(tokens), expected)

    # peft's own loader on a plain backbone gives the same logits
    peft_model = PeftModel.from_pretrained(load_backbone("tiny-llama").model, folder)
    logits = peft_model(input_ids=torch.tensor([tokens[0]])).logits[0, -1]
    yes, no = source.prompt.answer_ids.tolist()
    assert float(logits[yes] - logits[no]) == pytest.approx(float(expected[0]), abs=1e-4)


def test_saving_replaces_folder_atomically(tmp_path, scorer):
    folder = save_adapter(scorer, tmp_path / "adapter")
    _perturb(scorer)
    save_adapter(scorer, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda sd: sd.pop(next(iter(sd))), "names differ"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(2)), "names differ"),
        (lambda sd: sd.__setitem__(next(iter(sd)), torch.zeros(3, 3)), "has shape"),
        (lambda sd: sd.__setitem__(next(iter(sd)), sd[next(iter(sd))].double()), "has dtype"),
        (lambda sd: sd[next(iter(sd))].fill_(float("nan")), "non-finite"),
    ],
)
def test_mismatched_update_is_refused(scorer, mutate, message):
    state = adapter_state(scorer)
    before = adapter_state(scorer)
    mutate(state)
    with pytest.raises(AdapterMismatchError, match=message):
        load_adapter_arrays(scorer, ArrayRecord(torch_state_dict=state), "client 7")
    for name, tensor in adapter_state(scorer).items():
        assert torch.equal(tensor, before[name])


def test_prefix_cache_reuses_states(scorer):
    tokens = scorer.encode(["cache me please"])
    first = scorer.prefix_states(tokens)[0]
    assert PREFIX_CACHE.get(scorer.cache_key(tokens[0])) is first
    assert scorer.prefix_states(tokens)[0] is first


def test_prefix_store_round_trip_damage_and_pruning(tmp_path):
    store = PrefixStore(tmp_path / "store", max_files=2)
    states = [torch.randn(n, 4) for n in (3, 1, 5)]
    assert store.load(["a", "b", "c"]) is None
    store.save(["a", "b", "c"], states)
    loaded = store.load(["a", "b", "c"])
    assert all(torch.equal(got, want) for got, want in zip(loaded, states, strict=True))
    assert store.load(["a", "b"]) is None  # another prompt set, another file
    store.path(["a", "b", "c"]).write_bytes(b"\x00" * 10)  # damaged: recomputed, not trusted
    assert store.load(["a", "b", "c"]) is None
    for keys in (["x"], ["y"], ["z"]):
        store.save(keys, [torch.zeros(2, 4)])
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(
        store.path(k).name for k in (["y"], ["z"])
    )  # the two most recently used; no temporary files


def test_cached_states_compute_only_what_neither_the_cache_nor_the_store_holds(tmp_path):
    store, computed = PrefixStore(tmp_path / "store"), []

    def compute(lists):
        computed.append(lists)
        return [torch.full((len(t), 2), float(t[0])) for t in lists]

    lists, keys = [[1, 2], [3], [4, 5, 6]], ["test-cached:a", "test-cached:b", "test-cached:c"]
    for key in keys:
        PREFIX_CACHE.drop(key)
    PREFIX_CACHE.put(keys[1], torch.zeros(1, 2))  # already in memory: not computed again
    states = cached_states(lists, keys, compute, store)
    assert computed == [[[1, 2], [4, 5, 6]]] and torch.equal(states[1], torch.zeros(1, 2))
    assert all(PREFIX_CACHE.get(key) is state for key, state in zip(keys, states, strict=True))
    for key in keys:  # another process: the store holds the whole set
        PREFIX_CACHE.drop(key)
    again = cached_states(lists, keys, compute, store)
    assert len(computed) == 1 and all(torch.equal(a, b) for a, b in zip(again, states, strict=True))
    assert all(PREFIX_CACHE.get(key) is state for key, state in zip(keys, again, strict=True))  # now in memory
    store.path(keys).unlink()
    assert cached_states(lists, keys, compute, store) == again and len(computed) == 1  # memory first,
    assert store.path(keys).exists()  # and a store without them gets them for the next process
    for key in keys:
        PREFIX_CACHE.drop(key)
    cached_states(lists, keys, compute)  # no store, nothing in memory: all computed
    assert computed[-1] == lists


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    write_atomic(path, b"old")
    with pytest.raises(RuntimeError, match="disk full"), replacing(path) as tmp:
        tmp.write_bytes(b"half of the n")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    write_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_reset_adapter_is_deterministic(scorer):
    scorer.reset_adapter(3)
    a = adapter_state(scorer)
    _perturb(scorer)
    scorer.reset_adapter(3)
    b = adapter_state(scorer)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not v.any() for k, v in a.items() if "lora_B" in k)


def test_unknown_backbone_is_refused():
    with pytest.raises(BackboneError, match="unknown backbone 'gpt-17'"):
        load_backbone("gpt-17")


def test_too_many_lora_layers_is_refused():
    with pytest.raises(BackboneError, match="lora-layers = 5 but the backbone has 2 layers"):
        tiny_scorer(top_layers=5)


@pytest.mark.parametrize("freeze_a", [False, True])
def test_training_mode_reaches_only_the_adapter_and_its_modules_hold_every_trainable_parameter(freeze_a):
    scorer = tiny_scorer(freeze_a=freeze_a, dropout=0.1)
    held = [p for m in scorer.trainable_modules() for p in m.parameters() if p.requires_grad]
    assert len(held) == len({id(p) for p in held}) and {id(p) for p in held} == {
        id(p) for p in scorer.trainable_parameters()
    }
    assert all(len(list(m.children())) == 0 for m in scorer.trainable_modules())  # none inside another
    scorer.train()
    training = {name for name, m in scorer.named_modules() if m.training}
    assert {n for n in training if n} == {
        name
        for name, m in scorer.named_modules()
        if "lora_dropout" in name.split(".") or any(p.requires_grad for p in m.parameters(recurse=False))
    }
    scorer.eval()
    assert not any(m.training for m in scorer.modules())


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-bert"])
def test_the_backbone_fingerprint_is_sha256_of_names_shapes_and_bytes(spec):
    """Servers and nodes compare it (and the prefix stores are keyed by it): its
    definition must not drift, whatever makes it faster.
    """
    import hashlib

    backbone = load_backbone(spec)
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.model.state_dict().items()):
        digest.update(name.encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert backbone.fingerprint == digest.hexdigest()[:16]
    with torch.no_grad():
        next(backbone.model.parameters()).view(-1)[0] += 1.0
    assert weights_fingerprint(backbone.model) != backbone.fingerprint


def test_compute_dtype_auto_is_bfloat16_only_where_the_hardware_has_it():
    # the capability checks native_bfloat16 reads exist in this torch (a renamed one would silently mean float32)
    assert callable(torch.cpu._is_avx512_bf16_supported) and callable(torch.cpu._is_amx_tile_supported)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bfloat16("cpu") == native
    assert resolve_compute_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    if not torch.cuda.is_available():
        assert not native_bfloat16("cuda") and resolve_compute_dtype("auto", "cuda") == torch.float32
    for device in ("cpu", "cuda"):  # an explicit choice is kept whatever the hardware
        assert resolve_compute_dtype("float32", device) == torch.float32
        assert resolve_compute_dtype("bfloat16", device) == torch.bfloat16
    with pytest.raises(ValueError, match="float32, bfloat16, auto; got 'float16'"):
        resolve_compute_dtype("float16", "cpu")


def test_the_shared_scorer_runs_auto_at_the_resolved_dtype():
    settings = LoraSettings(rank=2, alpha=4.0, target_modules=("q_proj", "v_proj"), top_layers=1)
    scorer = shared_scorer("tiny-llama", settings, PREFERENCE_QUESTION, 96, "auto")
    assert scorer.compute_dtype == resolve_compute_dtype("auto", "cuda" if torch.cuda.is_available() else "cpu")
