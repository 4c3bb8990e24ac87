"""What the ServerApp trains, by ``recommender``: the LLM's LoRA adapter or the
collaborative model's item tables. Each gives the initial arrays, the central
evaluator, the config every request carries, its facts for the summary, and saves
the final arrays.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord

from ..config import FedRecConfig
from ..files import write_atomic
from ..models.adapter import adapter_to_arrays, frozen_a_fingerprint, load_adapter_arrays, save_adapter
from ..models.collaborative import initial_item_arrays
from ..models.item_tables import catalog_order
from ..models.prefix_store import PrefixStore
from ..models.scorer import Scorer
from ..privacy.item_cooccurrence import record_sensitivity, symmetric, user_level_epsilon, user_sensitivity
from ..privacy.item_statistics import COUNT_UNIT
from ..protocol.records import (
    BACKBONE,
    BACKBONE_FINGERPRINT,
    COOCCURRENCE,
    ITEM_COOCCURRENCE,
    LORA_A_FINGERPRINT,
    LORA_A_ROWS,
)
from ..tasks.collaborative.evaluation import CollaborativeEvaluator, ItemItemEvaluator
from ..tasks.collaborative.item_item import DISLIKE_WEIGHT, ITEM_WEIGHTS, RECENCY, Recency, fit_ease
from ..tasks.collaborative.priors import ItemCounts
from ..tasks.preference.dataset import CentralSplit, load_split
from ..tasks.preference.evaluation import CentralEvaluator
from ..tasks.preference.scoring import scorer_for
from ..tasks.preference.signals import CollaborativeSignals, item_tables_retriever
from ..tasks.ranking.cases import RankingCase, ranking_cases
from ..tasks.ranking.ranker import LLMRanker, Ranker
from ..tasks.ranking.rerank import RerankEvaluation
from .federation import Federation
from .node_sums import sum_over_nodes
from .rounds import Evaluator

MODEL_FILES = {"mf": "item-tables.npz", "ease": "item-weights.npz"}  # a collaborative run's final model
EVAL_STORE_FILES = 10_000  # files kept: one per ranking case, one per set of preference prompts


class ServedModel(Protocol):
    """The global model of a run, as the server handles it."""

    initial: ArrayRecord

    def evaluator(self, counts: ItemCounts | None = None) -> Evaluator:
        """The central evaluation of the held-out interactions (``counts``: federated item statistics)."""

    def request_config(self) -> dict[str, str | int]:
        """What every train and evaluate request carries."""

    def facts(self, size: int) -> dict[str, Any]:
        """Summary fields describing the model (``size``: bytes of its global arrays)."""

    def save(self, final: ArrayRecord, folder: Path) -> None:
        """Save the final global arrays in the results folder."""


def central_split(cfg: FedRecConfig) -> tuple[CentralSplit, list[RankingCase]]:
    """The evaluation users' split and the first ``ranking-users`` of their ranking cases."""
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    evaluation, cases = cfg.evaluation, []
    if evaluation.ranking_users:
        cases = ranking_cases(
            central.data,
            central.split,
            central.eval_users,
            evaluation.ranking_negatives,
            cfg.federation.seed,
            evaluation.eval_split,
        )[: evaluation.ranking_users]
    return central, cases


def llm_ranker(
    cfg: FedRecConfig, scorer: Scorer, central: CentralSplit, cases: list[RankingCase]
) -> tuple[Ranker | None, CollaborativeSignals | None]:
    """The LLM's ranking of ``cases`` (retrieve-then-rerank with ``rerank-top``) and, for
    a hybrid adapter, the evaluation users' collaborative signals.
    """
    batch = cfg.training.physical_batch_size
    folded = None
    if cfg.model.llm_input == "hybrid" or cfg.evaluation.rerank_top:
        catalog, train = central.data.items["item"], central.split.train_interactions
        folded = item_tables_retriever(cfg, catalog, train, central.eval_users)
    signals = CollaborativeSignals(folded) if folded is not None and cfg.model.llm_input == "hybrid" else None
    if not cases:
        return None, signals
    if folded is not None and cfg.evaluation.rerank_top:
        rated = central.data.interactions.groupby("user")["item"].agg(set).to_dict()
        top, fusion = cfg.evaluation.rerank_top, cfg.evaluation.rerank_fusion_weight
        evaluation = RerankEvaluation(
            scorer, cases, central.prompts, batch, folded, top, rated, signals, fusion, eval_prefix_store(cfg)
        )
        return evaluation, signals
    return LLMRanker(scorer, cases, central.prompts, batch, signals, eval_prefix_store(cfg)), signals


def eval_prefix_store(cfg: FedRecConfig) -> PrefixStore | None:
    """The central evaluation's store of frozen-prefix states (``eval-prefix-store``), or None."""
    folder = cfg.evaluation.eval_prefix_store
    return PrefixStore(folder, max_files=EVAL_STORE_FILES) if folder else None


class AdapterModel:
    """The LoRA adapter of the frozen backbone (``recommender = 'llm'``)."""

    def __init__(self, cfg: FedRecConfig) -> None:
        self.cfg = cfg
        self.scorer = scorer_for(cfg)
        self.scorer.reset_adapter(cfg.federation.seed)
        self.initial = adapter_to_arrays(self.scorer)

    def evaluator(self, counts: ItemCounts | None = None) -> Evaluator:  # noqa: D102
        cfg, (central, cases) = self.cfg, central_split(self.cfg)
        ranker, signals = llm_ranker(cfg, self.scorer, central, cases)
        batch, part = cfg.training.physical_batch_size, cfg.evaluation.eval_split
        return CentralEvaluator(self.scorer, central, batch, ranker, part, signals, eval_prefix_store(cfg))

    def request_config(self) -> dict[str, str | int]:
        """The backbone's identity and, when A does not travel, the frozen A's
        fingerprint (every node must draw the same one).
        """
        cfg = self.cfg
        shared: dict[str, str | int] = {BACKBONE: cfg.model.backbone, BACKBONE_FINGERPRINT: self.scorer.fingerprint}
        if cfg.freeze_lora_a:
            rows = min(cfg.model.client_lora_ranks, default=cfg.model.global_lora_rank)
            shared |= {LORA_A_FINGERPRINT: frozen_a_fingerprint(self.scorer, rows), LORA_A_ROWS: rows}
        return shared

    def facts(self, size: int) -> dict[str, Any]:  # noqa: D102
        params = self.scorer.named_parameters()
        full_model = sum(p.numel() * p.element_size() for n, p in params if "lora_" not in n)
        facts = {
            "recommender": "llm",
            "llm_input": self.cfg.model.llm_input,
            "backbone": {"name": self.cfg.model.backbone, "fingerprint": self.scorer.fingerprint},
            "bytes": {"full_model": full_model, "adapter_to_full_model": size / full_model},
        }
        if self.cfg.collaborative.item_tables:  # the retriever's or the soft tokens' run: its privacy composes
            facts["item_tables"] = item_tables_privacy(Path(self.cfg.collaborative.item_tables))
        return facts

    def save(self, final: ArrayRecord, folder: Path) -> None:
        """The adapter as a peft folder, ``adapter/``."""
        load_adapter_arrays(self.scorer, final, "final adapter")
        save_adapter(self.scorer, folder / "adapter")


class CollaborativeModel:
    """Matrix factorization's global item tables (``recommender = 'mf'``)."""

    def __init__(self, cfg: FedRecConfig) -> None:
        self.cfg = cfg
        central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
        self.num_items = len(catalog_order(central.data.items["item"]))
        arrays = initial_item_arrays(self.num_items, cfg.collaborative.mf_dim, cfg.federation.seed)
        self.initial = ArrayRecord({name: Array(values) for name, values in arrays.items()})

    def evaluator(self, counts: ItemCounts | None = None) -> Evaluator:
        """Fold-in evaluation; with ``counts``, each item's score gets ``mf-popularity-weight``
        times its federated popularity, and each preference score ``mf-like-rate-weight``
        times the like-rate logits.
        """
        central, cases = central_split(self.cfg)
        cfg, mf = self.cfg, self.cfg.collaborative
        popularity = counts.popularity() * mf.mf_popularity_weight if counts is not None else None
        return CollaborativeEvaluator(
            central,
            cfg.data.like_threshold,
            mf.mf_dim,
            cases,
            cfg.evaluation.eval_split,
            popularity,
            counts,
            mf.mf_like_rate_weight,
        )

    def request_config(self) -> dict[str, str | int]:  # noqa: D102
        return {}

    def facts(self, size: int) -> dict[str, Any]:  # noqa: D102
        return {"recommender": "mf", "mf": {"items": self.num_items, "dim": self.cfg.collaborative.mf_dim}}

    def save(self, final: ArrayRecord, folder: Path) -> None:
        """The item tables as ``item-tables.npz`` (one array per name)."""
        save_arrays(final, folder / MODEL_FILES["mf"])


class ItemItemModel:
    """EASE's item-item weights (``recommender = 'ease'``), fitted by :meth:`fit` from the
    nodes' summed co-occurrence of ratings before any round.
    """

    def __init__(self, cfg: FedRecConfig) -> None:
        self.cfg = cfg
        central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
        self.num_items = len(catalog_order(central.data.items["item"]))
        self.initial = self._arrays(np.zeros((self.num_items, self.num_items)))
        self.clients = 0

    def _arrays(self, weights: np.ndarray) -> ArrayRecord:
        """The model: ``weights`` and how users' rows are built (dislike weight, recency)."""
        ease = self.cfg.item_item
        dislike_weight = np.array([ease.ease_dislike_weight], np.float32)
        recency = Recency(ease.ease_recency_half_life, ease.ease_recency_floor)
        return ArrayRecord(
            {
                ITEM_WEIGHTS: Array(weights.astype(np.float32)),
                DISLIKE_WEIGHT: Array(dislike_weight),
                RECENCY: Array(recency.array()),
            }
        )

    def fit(self, federation: Federation) -> ArrayRecord:
        """Ask every node for its co-occurrence sums, fit EASE to their sum; the weights
        become :attr:`initial` (the model the summary describes).
        """
        size = self.num_items * (self.num_items + 1) // 2
        total, self.clients = sum_over_nodes(self.cfg, federation, ITEM_COOCCURRENCE, {COOCCURRENCE: size})
        ease = self.cfg.item_item
        gram = symmetric(total[COOCCURRENCE] * COUNT_UNIT, self.num_items)
        self.initial = self._arrays(fit_ease(gram, ease.ease_l2, ease.ease_rank))
        return self.initial

    def evaluator(self, counts: ItemCounts | None = None) -> Evaluator:  # noqa: D102
        central, cases = central_split(self.cfg)
        return ItemItemEvaluator(central, self.cfg.data.like_threshold, cases, self.cfg.evaluation.eval_split)

    def request_config(self) -> dict[str, str | int]:  # noqa: D102
        return {}

    def facts(self, size: int) -> dict[str, Any]:
        """The fit's settings, the nodes summed, the release's noise and its user-level epsilon."""
        ease, delta = self.cfg.item_item, self.cfg.record_dp.target_delta
        noised = ease.ease_noise > 0
        return {
            "recommender": "ease",
            "ease": {
                "items": self.num_items,
                "clients": self.clients,
                "bound": ease.ease_bound,
                "dislike_weight": ease.ease_dislike_weight,
                "noise_multiplier": ease.ease_noise,
                "record_sensitivity": record_sensitivity(ease.ease_bound),
                "noise_std": ease.ease_noise * record_sensitivity(ease.ease_bound),
                "user_sensitivity": user_sensitivity(ease.ease_bound),
                "rank": ease.ease_rank,
                "l2": ease.ease_l2,
                "recency_half_life": ease.ease_recency_half_life,
                "recency_floor": ease.ease_recency_floor,
                "user_level_epsilon": user_level_epsilon(ease.ease_noise, ease.ease_bound, delta) if noised else None,
            },
        }

    def save(self, final: ArrayRecord, folder: Path) -> None:
        """The weights as ``item-weights.npz``."""
        save_arrays(final, folder / MODEL_FILES["ease"])


def save_arrays(arrays: ArrayRecord, path: Path) -> None:
    """``arrays`` as one ``.npz`` file (one array per name), written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: array.numpy() for name, array in arrays.items()})
    write_atomic(path, buffer.getvalue())


def item_tables_privacy(path: Path) -> dict[str, Any]:
    """The file a hybrid run reads and the guarantee its run reported (``summary.json``
    beside it; None where there is none, e.g. tables from elsewhere).
    """
    summary_path = path.expanduser().parent / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return {"path": str(path), "epsilon_max": None, "delta": None, "client_dp": None}
    return {
        "path": str(path),
        "epsilon_max": summary.get("epsilon", {}).get("max") if summary.get("dp") else None,
        "delta": summary.get("delta"),
        "client_dp": summary.get("client_dp"),
    }


def served_model(cfg: FedRecConfig) -> ServedModel:
    """The model ``recommender`` names."""
    models = {"mf": CollaborativeModel, "ease": ItemItemModel}
    return models.get(cfg.model.recommender, AdapterModel)(cfg)
