"""Run configuration: one flat set of kebab-case keys, shared by the CLI, the
ServerApp and the ClientApp (Flower's ``run_config``), resolved from a preset, an
optional TOML file and ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .privacy.client_dp import ClientDPSettings
from .privacy.secagg import SecAggSettings

STRATEGIES = ("fedavg", "ffa-lora", "fedadam", "fedyogi", "fedavgm", "fedprox")


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


@dataclass(frozen=True)
class FedRecConfig:
    """Every setting of a fedrec run. Field ``foo_bar`` is config key ``foo-bar``."""

    # federation
    num_server_rounds: int = 3
    num_clients: int = 4
    partitioner: str = "iid"  # user | iid | skewed
    skew_alpha: float = 0.5
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    round_timeout: float = 3600.0
    client_cpus: float = 2.0
    client_gpus: float = 0.0
    seed: int = 42
    # aggregation (see fedrec.strategies)
    strategy: str = "fedavg"  # fedavg | ffa-lora | fedadam | fedyogi | fedavgm | fedprox
    server_learning_rate: float = 0.0  # 0: the strategy's default (FedAdam 0.1, FedYogi 0.01, FedAvgM 1.0)
    server_momentum: float = 0.9  # FedAvgM
    server_beta1: float = 0.9  # FedAdam, FedYogi
    server_beta2: float = 0.99  # FedAdam, FedYogi
    server_tau: float = 1e-3  # FedAdam, FedYogi: adaptivity
    proximal_mu: float = 0.01  # FedProx
    # data
    dataset: str = "ml-100k"
    items_path: str = ""
    max_users: int = 0
    like_threshold: float = 3.0
    history_length: int = 10
    test_interactions: int = 1
    train_examples_per_user: int = 0
    targets_per_history: int = 1  # m > 1: blocks of m training targets share one history
    eval_users: int = 300
    ranking_users: int = 0  # eval users (with a liked held-out item) ranked for HR@10/NDCG@10 at rounds 0 and last
    ranking_negatives: int = 99  # unrated items sampled per ranking user (fixed seed)
    # model
    backbone: str = "smollm2"
    max_length: int = 256
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: str = "q_proj,v_proj"
    lora_layers: int = 0  # LoRA on the top N transformer layers; 0 = all layers
    lora_freeze_a: bool = False  # FFA-LoRA's frozen A under any strategy (strategy ffa-lora implies it)
    lora_ranks: str = ""  # heterogeneous ranks, e.g. "4,8,16": client i gets rank i mod 3; needs a frozen A
    compute_dtype: str = "float32"  # autocast precision of the forward pass: float32 | bfloat16
    # local training
    local_epochs: int = 1
    batch_size: int = 16
    physical_batch_size: int = 16
    learning_rate: float = 5e-4
    # record-level differential privacy (Opacus)
    dp: bool = True
    noise_multiplier: float = 0.0  # 0: derived from target-epsilon
    target_epsilon: float = 8.0
    target_delta: float = 1e-5
    dp_planned_rounds: int = 0  # rounds each client's noise is calibrated for; 0: num-server-rounds
    max_grad_norm: float = 1.0
    accountant: str = "rdp"  # rdp | prv
    # secure aggregation (SecAgg+; see fedrec.privacy.secagg)
    secure_aggregation: bool = False
    num_shares: int = 5  # neighbourhood size: each client's secrets are shared among this many nodes
    reconstruction_threshold: int = 3  # shares needed to reconstruct a secret
    clipping_range: float = 4.0  # bound on each weighted update value (num-examples / max-weight) * (local - global)
    quantization_range: int = 4_194_304  # 2**22 levels over [-clipping-range, clipping-range]
    modulus_range: int = 4_294_967_296  # 2**32: arithmetic of the masked sum
    max_weight: float = 10_000.0  # largest num-examples a client may report
    secagg_timeout: float = 600.0  # seconds per key/unmask stage (the training stage uses round-timeout)
    # client-level differential privacy (see fedrec.privacy.client_dp)
    client_dp: bool = False
    client_dp_clip: float = 1.0  # L2 bound on each client's adapter update
    client_dp_noise_multiplier: float = 1.0  # noise std on the sum of updates = multiplier * clip
    client_dp_noise: str = "central"  # central: the server adds it | distributed: each client adds its share
    # server
    central_eval: bool = True
    out: str = ""
    resume: bool = False  # continue the run in `out` from its checkpoint (see fedrec.server.checkpoint)
    client_state_dir: str = ""  # simulation: per-partition ledger folders under it (a node's `state-dir` wins)

    def __post_init__(self) -> None:
        _check_choice("partitioner", self.partitioner, ("user", "iid", "skewed"))
        _check_choice("accountant", self.accountant, ("rdp", "prv"))
        _check_choice("compute_dtype", self.compute_dtype, ("float32", "bfloat16"))
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("client_dp_noise", self.client_dp_noise, ("central", "distributed"))
        positive = (
            "num_server_rounds",
            "num_clients",
            "history_length",
            "lora_rank",
            "local_epochs",
            "batch_size",
            "physical_batch_size",
            "learning_rate",
            "max_grad_norm",
            "target_delta",
            "max_length",
            "test_interactions",
            "targets_per_history",
            "ranking_negatives",
            "client_dp_clip",
            "client_dp_noise_multiplier",
            "server_tau",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key '{_key(name)}' must be > 0, got {getattr(self, name)}")
        non_negative = (
            "max_users",
            "train_examples_per_user",
            "eval_users",
            "ranking_users",
            "lora_layers",
            "lora_dropout",
            "noise_multiplier",
            "client_gpus",
            "skew_alpha",
            "server_learning_rate",
            "server_momentum",
            "proximal_mu",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{_key(name)}' must be >= 0, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate", "server_beta1", "server_beta2"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"config key '{_key(name)}' must be in [0, 1]")
        if not 0 <= self.dp_planned_rounds <= self.num_server_rounds:
            raise ConfigError(
                f"config key 'dp-planned-rounds' must be in [0, num-server-rounds = {self.num_server_rounds}] "
                f"(0: all rounds), got {self.dp_planned_rounds}"
            )
        if not 0.0 < self.target_delta < 1.0:
            raise ConfigError("config key 'target-delta' must be in (0, 1)")
        if self.dp and self.noise_multiplier == 0.0 and self.target_epsilon <= 0.0:
            raise ConfigError("with dp = true, set 'target-epsilon' > 0 or 'noise-multiplier' > 0")
        if not self.lora_modules:
            raise ConfigError("config key 'lora-target-modules' names no module")
        try:
            ranks = self.client_lora_ranks
        except ValueError:
            raise ConfigError(f"config key 'lora-ranks' must list positive integers, got '{self.lora_ranks}'") from None
        if ranks and not self.freeze_lora_a:
            raise ConfigError(
                "heterogeneous 'lora-ranks' aggregate exactly only with A frozen: "
                "use strategy = ffa-lora or set lora-freeze-a = true"
            )
        if self.secure_aggregation:
            try:
                self.secagg_settings.check(self.num_clients)
            except ValueError as err:
                raise ConfigError(f"secure aggregation: {err}") from None

    @property
    def secagg_settings(self) -> SecAggSettings:
        """SecAgg+ parameters from the same-named keys."""
        return SecAggSettings(
            num_shares=self.num_shares,
            reconstruction_threshold=self.reconstruction_threshold,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
            modulus_range=self.modulus_range,
            max_weight=self.max_weight,
            timeout=self.secagg_timeout,
        )

    @property
    def client_dp_settings(self) -> ClientDPSettings:
        """Client-level DP parameters from the ``client-dp-*`` keys."""
        return ClientDPSettings(
            clip=self.client_dp_clip,
            noise_multiplier=self.client_dp_noise_multiplier,
            distributed=self.client_dp_noise == "distributed",
        )

    @property
    def freeze_lora_a(self) -> bool:
        """Whether A stays at the shared seeded initialisation (FFA-LoRA): only B trains and travels."""
        return self.lora_freeze_a or self.strategy == "ffa-lora"

    @property
    def client_lora_ranks(self) -> list[int]:
        """Ranks assigned round-robin to clients (empty: every client has ``lora-rank``)."""
        ranks = [int(r) for r in self.lora_ranks.split(",") if r.strip()]
        if any(r <= 0 for r in ranks):
            raise ValueError(self.lora_ranks)
        return ranks

    @property
    def global_lora_rank(self) -> int:
        """Rank of the global adapter: the largest client rank, else ``lora-rank``."""
        return max(self.client_lora_ranks, default=self.lora_rank)

    def client_lora_rank(self, partition_id: int) -> int:
        """The LoRA rank of client ``partition_id``."""
        ranks = self.client_lora_ranks
        return ranks[partition_id % len(ranks)] if ranks else self.lora_rank

    @property
    def lora_modules(self) -> list[str]:
        """Target module names of LoRA, from the comma-separated key."""
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat kebab-case mapping, the form of Flower's ``run_config``."""
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> FedRecConfig:
        """A copy with fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: FedRecConfig | None = None) -> FedRecConfig:
        """Build from kebab-case keys over ``base``; unknown keys and wrong types raise."""
        known = {_key(f.name): f for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(known))})")
            changes[known[key].name] = _coerce(key, value, known[key].type)
        return dataclasses.replace(base or cls(), **changes)


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{_key(name)}' must be one of {', '.join(choices)}; got '{value}'")


_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Check (and where lossless, convert) a value to the field's type."""
    target = _TYPES[type_name if isinstance(type_name, str) else type_name.__name__]
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, str):
        return value
    raise ConfigError(f"config key '{key}' expects {target.__name__}, got {value!r}")


PRESETS: dict[str, dict[str, Any]] = {
    # Tiny random model on a slice of MovieLens-100K: seconds, for tests.
    "smoke": {
        "num-server-rounds": 2,
        "num-clients": 3,
        "max-users": 30,
        "history-length": 3,
        "train-examples-per-user": 6,
        "eval-users": 30,
        "ranking-users": 8,
        "ranking-negatives": 49,
        "backbone": "tiny-llama",
        "max-length": 128,
        "batch-size": 8,
        "physical-batch-size": 8,
        "learning-rate": 1e-3,
        "target-epsilon": 50.0,
        "client-cpus": 1.0,
    },
    # The README's main job: bundled SmolLM2-135M on MovieLens-100K, about 10 minutes on
    # a 2-core CPU at epsilon = 8. DP-tuned: few noisy parameters (FFA-LoRA rank 2 on the
    # top 2 layers), a large expected batch (sampling rate 1/8), clip 0.125, high lr.
    "demo": {
        "num-server-rounds": 5,
        "num-clients": 2,
        "history-length": 6,
        "train-examples-per-user": 3,
        "targets-per-history": 3,  # a user's 3 examples share one history: its prefix is computed once
        "eval-users": 300,
        "lora-rank": 2,
        "lora-alpha": 4.0,
        "lora-layers": 2,
        "strategy": "ffa-lora",
        "compute-dtype": "bfloat16",
        "batch-size": 180,
        "physical-batch-size": 32,  # 1.5x faster than 128 on the 2-core CPU (57 vs 38 examples/s)
        "learning-rate": 0.3,
        "max-grad-norm": 0.125,
        "target-epsilon": 8.0,
        "client-cpus": 2.0,  # one client process: its frozen-prefix cache serves every client
        "secure-aggregation": True,
    },
    # Benchmark settings for one GPU.
    "full": {
        "num-server-rounds": 10,
        "num-clients": 20,
        "eval-users": 943,
        "train-examples-per-user": 0,
        "lora-rank": 4,
        "lora-alpha": 8.0,
        "lora-layers": 4,
        "strategy": "ffa-lora",
        "compute-dtype": "bfloat16",
        "batch-size": 1024,
        "physical-batch-size": 128,
        "learning-rate": 0.1,
        "max-grad-norm": 0.125,
        "client-cpus": 2.0,
        "client-gpus": 0.25,
        "secure-aggregation": True,
    },
}


def resolve_config(
    preset: str = "demo",
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FedRecConfig:
    """Preset, then the TOML file's keys, then ``overrides`` (each later wins)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    cfg = FedRecConfig.from_mapping(PRESETS[preset])
    if config_file is not None:
        cfg = FedRecConfig.from_mapping(read_config_file(config_file), base=cfg)
    if overrides:
        cfg = FedRecConfig.from_mapping(overrides, base=cfg)
    return cfg


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file of kebab-case keys (top level or ``[tool.flwr.app.config]``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    app_config = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    return dict(app_config) if app_config is not None else data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are TOML literals or bare strings."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        result[key.strip()] = value
    return result
