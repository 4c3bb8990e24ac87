"""On-device recommendations: rank the catalog for one user from a local history file
with a run's global adapter (:mod:`.llm_rerank`), or retrieve with a collaborative run's
model and let the adapter rerank the top (:mod:`.retrieval`). Everything is read and
computed on this machine.

The prompt is the one training and evaluation use (the preference task's):
the last ``history-length`` rated items, liked when the rating is above
``like-threshold``. Every catalog item the history does not hold is a candidate, and
all candidates are scored with one pass over the shared history prefix
(:meth:`~fedrec.models.scorer.Scorer.score_candidates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..config import ConfigError, FedRecConfig
from ..data.interactions import DataError, InteractionData, load_interaction_data
from .inputs import RecommendError, load_history, run_config
from .recommendations import Recommendation
from .retrieval import retrieve

if TYPE_CHECKING:
    import torch

    from ..models.scorer import Scorer

DEFAULT_RERANK = 50  # retrieved items the LLM reranks
WARM_UP_ITEMS = 5  # the made-up history :meth:`Recommender.load` answers


@dataclass(frozen=True)
class RunFiles:
    """A run's configuration and the catalog it was trained on."""

    cfg: FedRecConfig
    data: InteractionData


class Recommender:
    """One run's models, opened once for the histories of many requests (``fedrec
    recommend --serve`` keeps one in memory): the retriever's file and catalog, the
    adapter run's config and catalog, and its scorer, loaded on first use or by
    :meth:`load`.

    With ``item_tables`` (a collaborative run's ``item-tables.npz``, or an ease run's
    ``item-weights.npz``) the run's model retrieves: it ranks the whole catalog, and the
    LLM adapter, when given, reranks its top ``candidates`` (default 50), fused with the
    retriever's scores at the adapter run's ``rerank-fusion-weight``. Without it the
    adapter scores the ``candidates`` most-rated unrated items of the dataset (0: the
    whole catalog). ``config``: the adapter run's configuration or its TOML file
    (default: ``config.toml`` beside ``adapter_dir``). A bad adapter folder, item-tables
    file or config raises :class:`RecommendError` naming the path and the problem.
    """

    def __init__(
        self,
        adapter_dir: str | Path | None = None,
        item_tables: str | Path | None = None,
        config: FedRecConfig | str | Path | None = None,
        candidates: int = 0,
    ) -> None:
        if candidates < 0 or (adapter_dir is None and item_tables is None):
            raise RecommendError(f"need an adapter or item tables and candidates >= 0; got candidates={candidates}")
        self.candidates = candidates
        self.item_tables = Path(item_tables).expanduser() if item_tables is not None else None
        self.retriever = _open_retriever(self.item_tables) if self.item_tables is not None else None
        self.adapter_dir = Path(adapter_dir).expanduser() if adapter_dir is not None else None
        self.adapter_run: RunFiles | None = None
        self._adapter: dict[str, torch.Tensor] | None = None  # the folder's tensors, read at first use
        if self.adapter_dir is not None:
            from .llm_rerank import adapter_run  # the LLM stack (torch, transformers, peft) loads only here

            self.adapter_run = RunFiles(*adapter_run(self.adapter_dir, config))

    def load(self) -> Recommender:
        """Load the LLM and answer a made-up history now, not at the first request: a
        service's first answer then takes as long as the next ones (torch prepares its
        kernels at the first forward of each shape), and a bad adapter stops it at start-up.
        """
        run = self.adapter_run or self.retriever
        assert run is not None
        self.recommend(_warm_up_history(run.data), 1)
        return self

    def recommend(self, history: str | Path | pd.DataFrame, k: int = 10) -> list[Recommendation]:
        """The ``k`` best-scored catalog items ``history`` does not hold, best first; a bad
        history or ``k`` raises :class:`RecommendError` before the LLM is loaded.
        """
        if k < 1:
            raise RecommendError(f"k must be >= 1, got {k}")
        retrieved = _retrieve(self.retriever, self.item_tables, history) if self.retriever is not None else None
        if self.adapter_run is None:
            assert self.retriever is not None and retrieved is not None
            titles = self.retriever.data.titles
            return [Recommendation(item, titles[item], score) for item, score in retrieved[:k]]
        cfg, data = self.adapter_run.cfg, self.adapter_run.data
        rated = _history(history, data)
        pool = self._pool(data, rated, retrieved)
        from ..tasks.ranking.rerank import fused_scores
        from .llm_rerank import llm_scores

        scores = llm_scores(cfg, data, self._llm(), rated, pool, self.item_tables)
        if retrieved is not None:  # the adapter run's late fusion with the retriever (weight 0: the LLM's order)
            retriever = np.array([score for _, score in retrieved[: len(pool)]])
            scores = fused_scores(scores, retriever, cfg.evaluation.rerank_fusion_weight)
        best = np.argsort(-scores, kind="stable")[:k]
        return [Recommendation(pool[i], data.titles[pool[i]], float(scores[i])) for i in best]

    def _pool(self, data: InteractionData, rated: pd.DataFrame, retrieved: list[tuple[str, float]] | None) -> list[str]:
        """The items the LLM scores: the retrieved top, or the unrated catalog (its most-rated part)."""
        if retrieved is not None:
            pool = [item for item, _ in retrieved[: self.candidates or DEFAULT_RERANK]]
        else:
            pool = sorted(set(data.items["item"]) - set(rated["item"]))
            if self.candidates:
                counts = data.interactions["item"].value_counts().to_dict()
                pool = sorted(pool, key=lambda item: -counts.get(item, 0))[: self.candidates]  # ties: id order
        if not pool:
            raise RecommendError(f"the history rates every item of the catalog of '{data.name}': nothing to recommend")
        return pool

    def _llm(self) -> Scorer | None:
        """The process-wide scorer with this run's adapter put in it (again at every call:
        another :class:`Recommender` in the process may have put its own; the folder is
        read once), None without an adapter.
        """
        if self.adapter_run is None:
            return None
        from .llm_rerank import adapter_scorer, read_adapter

        assert self.adapter_dir is not None
        if self._adapter is None:
            self._adapter = read_adapter(self.adapter_dir)
        return adapter_scorer(self.adapter_run.cfg, self._adapter, self.adapter_dir)


def recommend(
    adapter_dir: str | Path | None,
    history: str | Path | pd.DataFrame,
    k: int = 10,
    config: FedRecConfig | str | Path | None = None,
    candidates: int = 0,
    item_tables: str | Path | None = None,
) -> list[Recommendation]:
    """The ``k`` best-scored catalog items the history does not hold, best first: a
    :class:`Recommender` opened for this one history (see there for the arguments).
    Raises :class:`RecommendError` naming the path and the problem for a bad adapter
    folder, item-tables file, config, history or ``k``.
    """
    if k < 1:
        raise RecommendError(f"k must be >= 1, got {k}")
    return Recommender(adapter_dir, item_tables, config, candidates).recommend(history, k)


def _warm_up_history(data: InteractionData) -> pd.DataFrame:
    """A made-up history: the catalog's most-rated items, at the dataset's top rating."""
    ratings = data.interactions
    top = ratings["item"].value_counts(sort=True).index[:WARM_UP_ITEMS]
    return pd.DataFrame({"item": [str(item) for item in top], "rating": float(ratings["rating"].max())})


def _open_retriever(path: Path) -> RunFiles:
    """The collaborative run's config and catalog."""
    try:
        if not path.is_file():
            raise ConfigError(f"item-tables file {path} does not exist")
        cfg = run_config(path)
        return RunFiles(cfg, load_interaction_data(cfg.data.dataset, cfg.data.items_path))
    except (ConfigError, DataError, ValueError) as err:
        raise RecommendError(str(err)) from None


def _retrieve(run: RunFiles, path: Path, history: str | Path | pd.DataFrame) -> list[tuple[str, float]]:
    """The collaborative run's ranking of the catalog for the history."""
    rated = _history(history, run.data)
    try:
        return retrieve(path, rated, run.data, run.cfg)
    except (ConfigError, DataError, ValueError) as err:
        raise RecommendError(str(err)) from None


def _history(history: str | Path | pd.DataFrame, data: InteractionData) -> pd.DataFrame:
    """The history checked against the catalog."""
    try:
        return load_history(history, data)
    except DataError as err:
        raise RecommendError(str(err)) from None
