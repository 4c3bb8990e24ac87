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

import numpy as np
import pandas as pd

from ..config import ConfigError, FedRecConfig
from ..data.interactions import DataError, InteractionData, load_interaction_data
from .inputs import RecommendError, load_history, run_config
from .retrieval import retrieve

DEFAULT_RERANK = 50  # retrieved items the LLM reranks


@dataclass(frozen=True)
class Recommendation:
    """One recommended catalog item and its score: the LLM's ``logit(Yes) - logit(No)``,
    or the collaborative model's when it ranks alone.
    """

    item: str
    title: str
    score: float


def recommend(
    adapter_dir: str | Path | None,
    history: str | Path | pd.DataFrame,
    k: int = 10,
    config: FedRecConfig | str | Path | None = None,
    candidates: int = 0,
    item_tables: str | Path | None = None,
) -> list[Recommendation]:
    """The ``k`` best-scored catalog items the history does not hold, best first.

    With ``item_tables`` (a collaborative run's ``item-tables.npz``, or an ease run's
    ``item-weights.npz``) the run's model retrieves: it ranks the whole catalog, and the
    LLM adapter, when given, reranks its top ``candidates`` (default 50), fused with the
    retriever's scores at the adapter run's ``rerank-fusion-weight``. Without it the adapter scores the ``candidates``
    most-rated unrated items of the dataset (0: the whole catalog). ``config``: the
    adapter run's configuration or its TOML file (default: ``config.toml`` beside
    ``adapter_dir``). Raises :class:`RecommendError` naming the path and the problem for
    a bad adapter folder, item-tables file, config, history or ``k``.
    """
    if k < 1 or candidates < 0 or (adapter_dir is None and item_tables is None):
        raise RecommendError(
            f"need an adapter or item tables, k >= 1 and candidates >= 0; got k={k}, candidates={candidates}"
        )
    retrieved = _retrieved(Path(item_tables).expanduser(), history) if item_tables is not None else None
    if adapter_dir is None:
        assert retrieved is not None
        data, ranked = retrieved
        titles = data.titles
        return [Recommendation(item, titles[item], score) for item, score in ranked[:k]]
    # the LLM stack (torch, transformers, peft) loads only here: retrieval alone needs none of it
    from ..tasks.ranking.rerank import fused_scores
    from .llm_rerank import adapter_scorer, llm_scores

    cfg, data, rated, scorer = adapter_scorer(Path(adapter_dir).expanduser(), history, config)
    if retrieved is not None:
        pool = [item for item, _ in retrieved[1][: candidates or DEFAULT_RERANK]]
    else:
        pool = sorted(set(data.items["item"]) - set(rated["item"]))
        if candidates:
            counts = data.interactions["item"].value_counts().to_dict()
            pool = sorted(pool, key=lambda item: -counts.get(item, 0))[:candidates]  # ties stay in id order
    if not pool:
        raise RecommendError(f"the history rates every item of the catalog of '{data.name}': nothing to recommend")
    scores = llm_scores(cfg, data, scorer, rated, pool, item_tables)
    if retrieved is not None:  # the adapter run's late fusion with the retriever (weight 0: the LLM's order)
        retriever = np.array([score for _, score in retrieved[1][: len(pool)]])
        scores = fused_scores(scores, retriever, cfg.evaluation.rerank_fusion_weight)
    best = np.argsort(-scores, kind="stable")[:k]
    titles = data.titles
    return [Recommendation(pool[i], titles[pool[i]], float(scores[i])) for i in best]


def _retrieved(path: Path, history: str | Path | pd.DataFrame) -> tuple[InteractionData, list[tuple[str, float]]]:
    """The catalog and the collaborative run's ranking of it for the history."""
    try:
        if not path.is_file():
            raise ConfigError(f"item-tables file {path} does not exist")
        cfg = run_config(path)
        data = load_interaction_data(cfg.data.dataset, cfg.data.items_path)
        return data, retrieve(path, load_history(history, data), data, cfg)
    except (ConfigError, DataError, ValueError) as err:
        raise RecommendError(str(err)) from None


def format_recommendations(recommendations: list[Recommendation]) -> str:
    """A table of rank, item id, title and score."""
    item_width = max([len("item"), *(len(r.item) for r in recommendations)])
    title_width = max([len("title"), *(len(r.title) for r in recommendations)])
    lines = [f"{'rank':>4}  {'item':<{item_width}}  {'title':<{title_width}}  {'score':>8}"]
    for rank, r in enumerate(recommendations, start=1):
        lines.append(f"{rank:>4}  {r.item:<{item_width}}  {r.title:<{title_width}}  {r.score:>8.4f}")
    return "\n".join(lines)
