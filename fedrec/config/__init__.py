"""Run configuration: one section per subsystem, flattened to the flat kebab-case keys
shared by the CLI, the ServerApp and the ClientApp (Flower's ``run_config``), resolved
from a preset, an optional TOML file and ``--set key=value`` overrides.
"""

from .choices import (
    ACCOUNTANTS,
    CLIENT_DP_NOISE,
    COMPUTE_DTYPES,
    EVAL_SPLITS,
    ITEM_TEXTS,
    LLM_INPUTS,
    PARTITIONERS,
    RECOMMENDERS,
    STRATEGIES,
)
from .options import ConfigError, Section
from .presets import PRESETS, parse_overrides, read_config_file, resolve_config
from .run_config import FedRecConfig
from .sections import (
    AggregationConfig,
    ClientDPConfig,
    CollaborativeConfig,
    DataConfig,
    EvaluationConfig,
    FederationConfig,
    ItemStatisticsConfig,
    ModelConfig,
    RecordDPConfig,
    SecAggConfig,
    ServerConfig,
    TrainingConfig,
)

__all__ = [
    "ACCOUNTANTS",
    "CLIENT_DP_NOISE",
    "COMPUTE_DTYPES",
    "EVAL_SPLITS",
    "ITEM_TEXTS",
    "LLM_INPUTS",
    "LLM_OBJECTIVES",
    "PARTITIONERS",
    "PRESETS",
    "RECOMMENDERS",
    "STRATEGIES",
    "AggregationConfig",
    "ClientDPConfig",
    "CollaborativeConfig",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "FedRecConfig",
    "FederationConfig",
    "ItemStatisticsConfig",
    "ModelConfig",
    "RecordDPConfig",
    "SecAggConfig",
    "Section",
    "ServerConfig",
    "TrainingConfig",
    "parse_overrides",
    "read_config_file",
    "resolve_config",
]
