import tomllib
from pathlib import Path

import pytest

from fedrec.cli import main
from fedrec.config import PRESETS, ConfigError, FedRecConfig, parse_overrides, resolve_config
from fedrec.simulation.runner import absolute_paths


def test_pyproject_app_config_is_the_demo_preset():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == resolve_config("demo").to_run_config()
    components = pyproject["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "fedrec.server.app:app", "clientapp": "fedrec.client.app:app"}


def test_presets_resolve_and_round_trip():
    for name in PRESETS:
        cfg = resolve_config(name)
        assert FedRecConfig.from_mapping(cfg.to_run_config()) == cfg


def test_overrides_file_then_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('num-clients = 7\nbackbone = "minilm"\n')
    cfg = resolve_config("smoke", path, parse_overrides(["num-clients=9", "dp=false", "target-epsilon=3"]))
    assert (cfg.federation.num_clients, cfg.model.backbone, cfg.record_dp.dp, cfg.record_dp.target_epsilon) == (
        9,
        "minilm",
        False,
        3.0,
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num-clientz": 3}, "unknown config key 'num-clientz'"),
        ({"num-clients": "many"}, "config key 'num-clients' expects int, got 'many'"),
        ({"num-clients": 0}, "'num-clients' must be > 0"),
        ({"partitioner": "random"}, "'partitioner' must be one of user, iid, skewed"),
        ({"fraction-train": 1.5}, "'fraction-train' must be in"),
        ({"target-epsilon": 0.0}, "'target-epsilon' must be > 0, got 0.0"),
        ({"target-epsilon": -1.0, "noise-multiplier": 1.0}, "'target-epsilon' must be > 0, got -1.0"),
        ({"target-epsilon": float("nan")}, "'target-epsilon' must be finite"),
        ({"fraction-train": 0.0}, r"'fraction-train' must be in \(0, 1\], got 0.0"),
        ({"eval-split": "validation"}, "eval-split = 'validation' needs validation-interactions > 0"),
        (
            {"dp-planned-rounds": 3, "num-server-rounds": 2},
            r"'dp-planned-rounds' must be in \[0, num-server-rounds = 2\]",
        ),
    ],
)
def test_bad_config_is_refused_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("smoke", overrides=overrides)


def test_cli_prints_config_and_rejects_bad_keys(capsys):
    assert main(["config", "--preset", "smoke", "--set", "num-clients=5"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["num-clients"] == 5
    assert main(["simulate", "--preset", "smoke", "--set", "bogus=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err


def test_bad_config_file_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("num-clients = [")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        resolve_config("smoke", path)


def test_explain_lists_every_key_with_its_help_and_default_by_section(capsys):
    assert main(["config", "--preset", "demo", "--explain"]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text) == resolve_config("demo").to_run_config()  # the comments are TOML comments
    for section in FedRecConfig.sections().values():
        assert f"# ---- [{section.title}]" in text
        for key, field in section.keys().items():
            assert f"# {field.metadata['help']}" in text and f"\n{key} = " in text, key
    assert "# LoRA rank (default 8; > 0)\nlora-rank = 2" in text  # the demo's value, the default beside it
    assert "one of fedavg, ffa-lora, fedadam, fedyogi, fedavgm, fedprox" in text


def test_local_paths_are_made_absolute_for_the_flower_processes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(resolve_config("smoke", overrides={"out": "run", "eval-prefix-store": "store"}))
    assert cfg.server.out == str(tmp_path / "run") and cfg.server.client_state_dir == str(tmp_path / "run" / "nodes")
    assert cfg.evaluation.eval_prefix_store == str(tmp_path / "store")
    assert absolute_paths(resolve_config("smoke", overrides={"out": "run"})).evaluation.eval_prefix_store == ""
