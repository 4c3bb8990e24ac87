"""On-device recommendations (``fedrec recommend``): the ranking against the scorer's own
forward on the training prompt, history files, the CLI table, and clear errors.
"""

import json
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
import torch

from fedrec.cli import main
from fedrec.client.inputs import load_history
from fedrec.client.recommend import Recommender, RecommendError, recommend
from fedrec.client.service import RequestError, ServiceError, ask, claim_socket_path, read_request
from fedrec.config import resolve_config
from fedrec.data.interactions import load_interaction_data
from fedrec.models.adapter import save_adapter
from fedrec.models.split_check import full_forward_score
from fedrec.tasks.preference.examples import PreferenceExample
from fedrec.tasks.preference.prompt import render_preference_prompt
from fedrec.tasks.preference.scoring import scorer_for
from tests.conftest import write_planted_dataset

# rank 4 and seed 3: a shared scorer of its own, so the adapters loaded here reach no other test
OVERRIDES = {"lora-rank": 4, "lora-alpha": 8.0, "seed": 3}
# oldest first by timestamp: 2, 0, 4, 6 (the prompt keeps the last history-length = 3)
HISTORY = pd.DataFrame({"item": [0, 2, 4, 6], "rating": [1.0, 5.0, 4.0, 2.0], "timestamp": [20, 10, 30, 40]})


def save_run(folder: Path, cfg, seed: int) -> Path:
    """A run folder: ``config.toml`` and an adapter with B drawn from ``seed``."""
    scorer = scorer_for(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in scorer.peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(tomli_w.dumps(cfg.to_run_config()))
    return save_adapter(scorer, folder / "adapter")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The planted dataset's config and two run folders with different adapters."""
    root = tmp_path_factory.mktemp("recommend")
    inter, items = write_planted_dataset(root)
    cfg = resolve_config("smoke", overrides={**OVERRIDES, "dataset": str(inter), "items-path": str(items)})
    history = root / "history.csv"
    HISTORY.to_csv(history, index=False)
    return cfg, save_run(root / "run1", cfg, seed=1), save_run(root / "run2", cfg, seed=2), history


def test_recommendations_are_the_catalog_minus_history_scored_on_the_training_prompt(runs):
    cfg, adapter, _, history = runs
    found = recommend(adapter, history, k=5)
    scores = [r.score for r in found]
    assert len(found) == 5 and scores == sorted(scores, reverse=True)
    assert not {r.item for r in found} & {"0", "2", "4", "6"}
    data = load_interaction_data(cfg.data.dataset, cfg.data.items_path)
    titles = data.titles
    assert all(r.title == titles[r.item] for r in found)
    everything = recommend(adapter, history, k=100)
    assert sorted(r.item for r in everything) == sorted(set(titles) - {"0", "2", "4", "6"})  # the whole rest
    recent = (("0", False), ("4", True), ("6", False))  # chronological, last 3, liked when rating > 3
    scorer = scorer_for(cfg)  # holds the adapter recommend() loaded
    for r in found:
        prompt = render_preference_prompt(PreferenceExample("u", r.item, 0, recent), titles, data.noun)
        # tolerance: float32 summation order of the cached-prefix batch vs the model's own forward
        assert r.score == pytest.approx(full_forward_score(scorer, scorer.encode([prompt])[0]), abs=1e-4)


def test_an_adapter_trained_on_titles_and_genres_is_asked_with_them(runs, tmp_path):
    cfg, *_, history = runs
    items = pd.read_csv(cfg.data.items_path).assign(
        genres=lambda t: ["Drama Sci-Fi" if i % 3 else "" for i in t["item"]]
    )
    items.to_csv(tmp_path / "items.csv", index=False)
    cfg = cfg.replace(items_path=str(tmp_path / "items.csv"), item_text="title-genres")
    found = recommend(save_run(tmp_path / "run", cfg, seed=1), history, k=3)
    data = load_interaction_data(cfg.data.dataset, cfg.data.items_path)
    assert all(r.title == data.titles[r.item] for r in found)  # shown by title alone
    names = replace(data, item_text="title-genres").prompt_names
    recent = (("0", False), ("4", True), ("6", False))
    scorer = scorer_for(cfg)
    for r in found:
        prompt = render_preference_prompt(PreferenceExample("u", r.item, 0, recent), names, data.noun)
        assert "[Drama, Sci-Fi]" in prompt  # history item 4 has genres
        assert r.score == pytest.approx(full_forward_score(scorer, scorer.encode([prompt])[0]), abs=1e-4)


def test_a_different_adapter_changes_the_scores(runs):
    _, adapter1, adapter2, history = runs
    first = {r.item: r.score for r in recommend(adapter1, history, k=100)}
    second = {r.item: r.score for r in recommend(adapter2, history, k=100)}
    assert first.keys() == second.keys()
    assert max(abs(first[i] - second[i]) for i in first) > 1e-2


def test_history_files_csv_tsv_and_json_lines_load_alike(runs, tmp_path):
    cfg = runs[0]
    data = load_interaction_data(cfg.data.dataset, cfg.data.items_path)
    HISTORY.to_csv(tmp_path / "h.tsv", sep="\t", index=False)
    HISTORY.to_json(tmp_path / "h.jsonl", orient="records", lines=True)
    loaded = [load_history(path, data) for path in (runs[3], tmp_path / "h.tsv", tmp_path / "h.jsonl")]
    assert loaded[0]["item"].tolist() == ["2", "0", "4", "6"]  # sorted by timestamp
    for other in loaded[1:]:
        pd.testing.assert_frame_equal(other, loaded[0])
    HISTORY[["item", "rating"]].to_csv(tmp_path / "order.csv", index=False)
    assert load_history(tmp_path / "order.csv", data)["item"].tolist() == ["0", "2", "4", "6"]  # file order


def test_candidates_keeps_the_most_rated_unrated_items(runs):
    cfg, adapter, _, history = runs
    data = load_interaction_data(cfg.data.dataset, cfg.data.items_path)
    counts = data.interactions["item"].value_counts()
    unrated = counts.drop(["0", "2", "4", "6"])
    found = recommend(adapter, history, k=100, candidates=3)
    assert len(found) == 3 and min(counts[r.item] for r in found) >= unrated.sort_values().iloc[-3]


def test_cli_prints_a_table_of_k_titles_from_movielens(runs, tmp_path, capsys):
    cfg = runs[0].replace(dataset="ml-100k", items_path="")
    adapter = save_run(tmp_path / "run", cfg, seed=1)
    history = tmp_path / "history.csv"
    history.write_text("item,rating\n1,5\n50,5\n181,4\n121,2\n")  # Toy Story, Star Wars, Return of the Jedi, ...
    assert (
        main(["recommend", "--adapter", str(adapter), "--history", str(history), "-k", "4", "--candidates", "40"]) == 0
    )
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["rank", "item", "title", "score"]
    titles = load_interaction_data("ml-100k").titles
    assert len(rows) == 4
    for rank, row in enumerate(rows, start=1):
        number, item, *_ = row.split()
        assert number == str(rank) and titles[item] in row and item not in ("1", "50", "181", "121")
        float(row.split()[-1])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing adapter folder": (lambda a, h, t: (t / "nowhere" / "adapter", h), r"adapter folder .*nowhere.* does not"),
    "no config beside the adapter": (
        lambda a, h, t: (Path(shutil.copytree(a, t / "lonely" / "adapter")), h),
        r"lonely/config.toml does not exist",
    ),
    "unknown item": (
        lambda a, h, t: (a, _write(t / "h.csv", "item,rating\n2,5\n999,4\n")),
        r"h.csv line 3: item 999 is missing from the catalog",
    ),
    "malformed rating": (
        lambda a, h, t: (a, _write(t / "h.csv", "item,rating\n2,5\n4,great\n")),
        r"h.csv line 3: column 'rating' must be a finite number, found 'great'",
    ),
    "empty history": (lambda a, h, t: (a, _write(t / "h.jsonl", "")), r"h.jsonl is empty"),
    "no header": (
        lambda a, h, t: (a, _write(t / "h.csv", "2,5\n4,1\n")),
        r"h.csv: missing column\(s\) \['item', 'rating'\]",
    ),
    "missing history": (lambda a, h, t: (a, t / "absent.csv"), r"absent.csv does not exist"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_give_an_error_naming_the_path_and_problem(runs, tmp_path, case):
    make, message = BAD_INPUTS[case]
    adapter, history = make(runs[1], runs[3], tmp_path)
    with pytest.raises(RecommendError, match=message):
        recommend(adapter, history)


def test_an_adapter_of_another_shape_is_refused(runs, tmp_path, capsys):
    cfg, adapter, _, history = runs
    config = _write(tmp_path / "rank2.toml", tomli_w.dumps(cfg.replace(lora_rank=2).to_run_config()))
    with pytest.raises(RecommendError, match=r"adapter.*lora_A.weight' has shape \(4, 32\), expected \(2, 32\)"):
        recommend(adapter, history, config=config)
    assert main(["recommend", "--adapter", str(adapter), "--history", str(history), "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fedrec: ") and "has shape" in error and error.count("\n") == 1


def _loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``import {imports}``."""
    code = f"import json, sys; import {imports}; print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_retrieval_alone_does_not_import_the_training_or_llm_stack():
    """`fedrec recommend --item-tables` without an adapter: peft, Opacus and transformers stay unloaded."""
    assert _loaded_after("fedrec.cli, fedrec.client.recommend", ("peft", "opacus", "transformers")) == []


def test_an_llm_rerank_on_the_device_does_not_import_the_partitioners():
    """`fedrec recommend --adapter` reads one history: `datasets` (a second to import) stays unloaded."""
    imports = "fedrec.cli, fedrec.client.recommend, fedrec.client.llm_rerank, fedrec.client.app"
    assert _loaded_after(imports, ("datasets", "flwr_datasets")) == []


SERVE_LIMIT = 120.0  # seconds the service may take to start or stop here


def _start_service(socket_path: Path, *args: str) -> subprocess.Popen:
    """``fedrec recommend --serve`` in its own process; returns once it serves (bounded)."""
    fedrec = Path(sys.executable).parent / "fedrec"
    command = [str(fedrec), "recommend", "--serve", str(socket_path), *args]
    service = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SERVE_LIMIT
    while not socket_path.exists():
        assert service.poll() is None, f"the service ended: {service.communicate()[1]}"
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.1)
    return service


def _stop(service: subprocess.Popen) -> int:
    service.send_signal(signal.SIGTERM)
    try:
        return service.wait(timeout=SERVE_LIMIT)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=SERVE_LIMIT)


def _raw(socket_path: Path, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(SERVE_LIMIT)
        connection.connect(str(socket_path))
        connection.sendall(line)
        return json.loads(connection.makefile("rb").readline())


def test_a_resident_service_answers_as_recommend_does_and_outlives_bad_requests(runs, tmp_path, capsys):
    _, adapter, _, history = runs
    socket_path = tmp_path / "recommend.sock"
    service = _start_service(socket_path, "--adapter", str(adapter), "--candidates", "6")
    try:
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600  # the owner's only
        expected = recommend(adapter, history, k=4, candidates=6)
        asked = ask(socket_path, history, k=4)
        assert [r.item for r in asked] == [r.item for r in expected]
        assert [r.score for r in asked] == pytest.approx([r.score for r in expected], abs=1e-5)
        rows = HISTORY.to_dict(orient="records")
        assert [r.item for r in ask(socket_path, rows, k=4)] == [r.item for r in expected]
        with pytest.raises(ServiceError, match=r"item 999 is missing from the catalog"):
            ask(socket_path, [{"item": 999, "rating": 5}])
        with pytest.raises(ServiceError, match=r"k must be >= 1"):
            ask(socket_path, history, k=0)
        with pytest.raises(ServiceError, match=r"a non-empty list of \{item, rating"):
            ask(socket_path, [])
        assert "must be absolute" in _raw(socket_path, b'{"history": "h.csv"}\n')["error"]
        assert "not JSON" in _raw(socket_path, b"{history\n")["error"]
        assert [r.item for r in ask(socket_path, history, k=4)] == [r.item for r in expected]  # still serving
        assert main(["recommend", "--service", str(socket_path), "--history", str(history), "-k", "2"]) == 0
        header, *lines = capsys.readouterr().out.strip().splitlines()
        assert header.split() == ["rank", "item", "title", "score"] and len(lines) == 2
        assert main(["recommend", "--service", str(socket_path), "--history", str(history), "--adapter", "x"]) == 2
        assert "--adapter: the service uses what it was started with" in capsys.readouterr().err
        second = subprocess.run(
            [str(Path(sys.executable).parent / "fedrec"), "recommend", "--serve", str(socket_path), "--adapter",
             str(adapter)],
            capture_output=True, text=True, timeout=SERVE_LIMIT,
        )  # fmt: skip
        assert second.returncode == 2 and "a service already answers at" in second.stderr
    finally:
        code = _stop(service)
    assert code == 0 and not socket_path.exists()
    with pytest.raises(ServiceError, match=r"no recommendation service answers at .*recommend.sock"):
        ask(socket_path, history)


def test_loading_answers_a_made_up_history_and_changes_no_answer(runs):
    """A service's first request is not its slowest: load() has already answered one of the catalog's items."""
    _, adapter, _, history = runs
    asked = []

    class Counting(Recommender):
        def recommend(self, history, k=10):
            asked.append(history)
            return super().recommend(history, k)

    loaded = Counting(adapter, candidates=6).load()
    catalog = set(loaded.adapter_run.data.items["item"])
    assert len(asked) == 1 and len(asked[0]) == 5 and set(asked[0]["item"]) <= catalog
    expected = recommend(adapter, history, k=4, candidates=6)
    assert [(r.item, r.score) for r in loaded.recommend(history, 4)] == [(r.item, r.score) for r in expected]


def test_a_recommender_reads_its_adapter_folder_once(runs, tmp_path):
    """The service keeps the adapter it started with: a later change to the folder is not read per request."""
    _, adapter, _, history = runs
    copy = shutil.copytree(adapter.parent, tmp_path / "run") / adapter.name
    loaded = Recommender(copy, candidates=6).load()
    expected = loaded.recommend(history, 4)
    (copy / "adapter_model.safetensors").write_bytes(b"not safetensors")  # in place: the old bytes are gone
    found = loaded.recommend(history, 4)  # the second from the prefix cache: equal within 1e-5
    assert [r.item for r in found] == [r.item for r in expected]
    assert [r.score for r in found] == pytest.approx([r.score for r in expected], abs=1e-5)
    with pytest.raises(RecommendError, match=r"adapter_model\.safetensors cannot be read"):
        Recommender(copy, candidates=6).recommend(history, 4)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"history": "/h.csv"}', "one JSON line"),
        (b"[1, 2]\n", "an object with 'history'"),
        (b'{"history": "/h.csv", "n": 3}\n', "an object with 'history' and optionally 'k'; got ['history', 'n']"),
        (b'{"history": "/h.csv", "k": true}\n', "'k' must be an integer"),
        (b'{"history": []}\n', "a non-empty list"),
        (b'{"history": [1, 2]}\n', "a non-empty list"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_problem(line, problem):
    with pytest.raises(RequestError, match=re.escape(problem)):
        read_request(line)


def test_a_stale_socket_is_replaced_and_a_plain_file_kept(tmp_path):
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(stale))  # bound, never listened, closed: what a killed service leaves
    claim_socket_path(stale)
    assert not stale.exists()
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    with pytest.raises(ServiceError, match=r"notes.txt: it is a file, not a socket"):
        claim_socket_path(plain)
    assert plain.read_text() == "mine"


def test_asking_a_service_imports_the_standard_library_only():
    """`fedrec recommend --service`: the command and the asking path leave numpy, pandas, torch and Flower unloaded."""
    modules = ("pandas", "numpy", "torch", "transformers", "flwr")
    assert _loaded_after("fedrec.cli, fedrec.client.service, fedrec.client.recommendations", modules) == []
