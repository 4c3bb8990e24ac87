"""The whole configuration of a run: its sections, flattened to and from Flower's flat
kebab-case ``run_config`` (every key belongs to exactly one section).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .options import ConfigError, Section, coerce
from .sections import (
    AggregationConfig,
    ClientDPConfig,
    CollaborativeConfig,
    DataConfig,
    EvaluationConfig,
    FederationConfig,
    ItemItemConfig,
    ItemStatisticsConfig,
    ModelConfig,
    RecordDPConfig,
    SecAggConfig,
    ServerConfig,
    TrainingConfig,
)


@dataclass(frozen=True)
class FedRecConfig:
    """Every setting of a fedrec run, by subsystem."""

    federation: FederationConfig = field(default_factory=FederationConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    collaborative: CollaborativeConfig = field(default_factory=CollaborativeConfig)
    item_item: ItemItemConfig = field(default_factory=ItemItemConfig)
    item_statistics: ItemStatisticsConfig = field(default_factory=ItemStatisticsConfig)
    record_dp: RecordDPConfig = field(default_factory=RecordDPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    client_dp: ClientDPConfig = field(default_factory=ClientDPConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        rounds = self.federation.num_server_rounds
        if not 0 <= self.record_dp.dp_planned_rounds <= rounds:
            raise ConfigError(
                f"config key 'dp-planned-rounds' must be in [0, num-server-rounds = {rounds}] "
                f"(0: all rounds), got {self.record_dp.dp_planned_rounds}"
            )
        if self.evaluation.eval_split == "validation" and not self.data.validation_interactions:
            raise ConfigError("eval-split = 'validation' needs validation-interactions > 0")
        if self.model.client_lora_ranks and not self.freeze_lora_a:
            raise ConfigError(
                "heterogeneous 'lora-ranks' aggregate exactly only with A frozen: "
                "use strategy = ffa-lora or set lora-freeze-a = true"
            )
        if self.model.llm_input == "hybrid" and (self.model.recommender != "llm" or not self.collaborative.item_tables):
            raise ConfigError("llm-input = 'hybrid' needs recommender = 'llm' and item-tables (an mf run's file)")
        if self.evaluation.rerank_top and (self.model.recommender != "llm" or not self.collaborative.item_tables):
            raise ConfigError("rerank-top > 0 needs recommender = 'llm' and item-tables (the retriever)")
        self._check_train_negatives()
        if self.evaluation.rerank_fusion_weight and not self.evaluation.rerank_top:
            raise ConfigError("rerank-fusion-weight > 0 needs rerank-top > 0 (it fuses the reranked top N)")
        self._check_rounds()
        if self.model.recommender == "mf":
            self._check_collaborative()
        elif self.item_statistics.item_statistics:
            raise ConfigError("item-statistics are used by recommender = 'mf' only (mf-popularity-weight)")
        statistics = self.item_statistics
        if statistics.item_statistics and self.record_dp.dp and statistics.item_statistics_noise == 0:
            raise ConfigError("with dp = true, item-statistics-noise must be > 0 (exact counts are not private)")
        for key, weight in (
            ("mf-popularity-weight", self.collaborative.mf_popularity_weight),
            ("mf-like-rate-weight", self.collaborative.mf_like_rate_weight),
        ):
            if weight > 0 and not statistics.item_statistics:
                raise ConfigError(f"{key} > 0 needs item-statistics = true")
        if self.secagg.secure_aggregation:
            try:
                self.secagg.check_sum(self.federation.num_clients)
            except ValueError as err:
                raise ConfigError(f"secure aggregation: {err}") from None

    def _check_train_negatives(self) -> None:
        """A negatives pool needs the ranking objective, a retriever, and room for the negatives."""
        training = self.training
        if not training.train_negatives_pool:
            return
        if training.objective != "ranking" or not self.collaborative.item_tables:
            raise ConfigError("train-negatives-pool > 0 needs objective = 'ranking' and item-tables (the retriever)")
        if training.train_negatives_pool < training.train_negatives:
            raise ConfigError(
                f"train-negatives-pool ({training.train_negatives_pool}) must be >= train-negatives "
                f"({training.train_negatives}): the negatives are drawn from the pool without replacement"
            )

    def _check_rounds(self) -> None:
        """The item-item model has no training rounds; the other models need some."""
        rounds = self.federation.num_server_rounds
        if self.model.recommender != "ease":
            if rounds < 1:
                raise ConfigError(
                    f"config key 'num-server-rounds' must be >= 1 for recommender = "
                    f"'{self.model.recommender}', got {rounds}"
                )
            return
        if rounds:
            raise ConfigError(
                "recommender = 'ease' is fitted in one exchange before round 1: set num-server-rounds = 0"
            )
        if self.federation.fraction_evaluate > 0:
            raise ConfigError("recommender = 'ease' is evaluated centrally: set fraction-evaluate = 0")
        if self.record_dp.dp and self.item_item.ease_noise == 0:
            raise ConfigError("with dp = true, ease-noise must be > 0 (exact co-occurrence sums are not private)")
        if self.client_dp.client_dp:
            raise ConfigError("recommender = 'ease' has no update to clip: client-dp does not apply (use dp)")
        if self.server.resume:
            raise ConfigError("recommender = 'ease' is fitted in one exchange: a stopped run has nothing to resume")

    def _check_collaborative(self) -> None:
        """Settings that only the LLM's adapter has."""
        if self.freeze_lora_a or self.model.client_lora_ranks:
            raise ConfigError(
                "recommender = 'mf' has no LoRA: strategy ffa-lora, lora-freeze-a, lora-ranks do not apply"
            )
        if self.federation.fraction_evaluate > 0:
            raise ConfigError("recommender = 'mf' is evaluated centrally: set fraction-evaluate = 0")
        if self.collaborative.mf_fold_in and self.record_dp.dp:
            raise ConfigError(
                "mf-fold-in fits user embeddings without DP-SGD, which breaks record-level DP: "
                "set dp = false (and client-dp = true for user-level privacy)"
            )

    @property
    def freeze_lora_a(self) -> bool:
        """Whether A stays at the shared seeded initialisation (FFA-LoRA): only B trains and travels."""
        return self.model.lora_freeze_a or self.aggregation.strategy == "ffa-lora"

    @property
    def planned_dp_rounds(self) -> int:
        """Rounds each client's record-level noise is calibrated for."""
        return self.record_dp.dp_planned_rounds or self.federation.num_server_rounds

    @classmethod
    def sections(cls) -> dict[str, type[Section]]:
        """Attribute name -> section class, in order."""
        return {f.name: f.default_factory for f in fields(cls)}  # type: ignore[misc]

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat kebab-case mapping, the form of Flower's ``run_config``."""
        return {k: v for name in self.sections() for k, v in getattr(self, name).values().items()}

    def replace(self, **changes: Any) -> FedRecConfig:
        """A copy with keys replaced, named as fields (``num_clients=8``); validated again."""
        return self.from_mapping({name.replace("_", "-"): value for name, value in changes.items()}, base=self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: FedRecConfig | None = None) -> FedRecConfig:
        """Build from kebab-case keys over ``base``; unknown keys and wrong types raise."""
        base = base or cls()
        owner = {key: name for name, section in cls.sections().items() for key in section.keys()}
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key not in owner:
                raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(owner))})")
            field_ = cls.sections()[owner[key]].keys()[key]
            changes.setdefault(owner[key], {})[field_.name] = coerce(key, value, field_.type)
        sections = {name: dataclasses.replace(getattr(base, name), **kw) for name, kw in changes.items()}
        return dataclasses.replace(base, **sections)
