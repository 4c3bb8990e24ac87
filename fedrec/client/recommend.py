"""On-device recommendations: rank the catalog for one user from a local history file
with a run's global adapter, or retrieve with a collaborative run's item tables and let
the adapter rerank the top (:mod:`.retrieval`). Everything is read and computed on this
machine.

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
from safetensors import SafetensorError

from ..config import ConfigError, FedRecConfig, read_config_file
from ..data.interactions import DataError, InteractionData, Source, load_interaction_data, read_table, validate
from ..models.adapter import load_adapter_folder
from ..models.errors import BackboneError
from ..models.scorer import Scorer
from ..models.wire import AdapterMismatchError
from ..tasks.collaborative.folded import FoldedInTables
from ..tasks.preference.dataset import prompt_data
from ..tasks.preference.examples import PreferenceExample
from ..tasks.preference.prompt import render_preference_prompt
from ..tasks.preference.scoring import scorer_for
from ..tasks.preference.signals import CollaborativeSignals
from ..tasks.ranking.rerank import fused_scores
from .retrieval import retrieve

LOCAL_USER = "(local)"
DEFAULT_RERANK = 50  # retrieved items the LLM reranks
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


class RecommendError(ValueError):
    """An input of :func:`recommend` (adapter folder, run config, history, k) is missing or malformed."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended catalog item and its score: the LLM's ``logit(Yes) - logit(No)``,
    or the collaborative model's when it ranks alone.
    """

    item: str
    title: str
    score: float


def _read_history(path: Path) -> pd.DataFrame:
    """The rows of a history file: JSON lines by suffix, else CSV/TSV/Parquet."""
    if path.suffix not in JSON_LINES_SUFFIXES:
        return read_table(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        frame = pd.read_json(path, lines=True, dtype=False)
    except ValueError as err:
        raise DataError(f"{path} cannot be parsed as JSON lines: {err}") from None
    if frame.columns.empty:
        raise DataError(f"{path} is empty")
    return frame


def load_history(source: str | Path | pd.DataFrame, data: InteractionData) -> pd.DataFrame:
    """One user's ratings as ``item, rating, timestamp``, oldest first (file order
    without timestamps), from a CSV/TSV or JSON-lines file (or a frame) of
    ``item,rating[,timestamp]``. Items must be in ``data``'s catalog; ratings numeric.
    """
    if isinstance(source, pd.DataFrame):
        name, frame = Source("history", None), source.copy()
    else:
        path = Path(source).expanduser()
        frame = _read_history(path)
        name = Source(str(source), 1) if path.suffix in JSON_LINES_SUFFIXES else Source.of(source)
    missing = [c for c in ("item", "rating") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{name.name}: missing column(s) {missing}; expected a header line item,rating[,timestamp], "
            f"found {[str(c) for c in frame.columns]}"
        )
    if "timestamp" not in frame.columns:
        frame["timestamp"] = np.arange(len(frame))
    frame.insert(0, "user", LOCAL_USER)
    checked = validate(frame, data.items, name, Source(f"the catalog of '{data.name}'", None)).interactions
    return checked.sort_values("timestamp", kind="stable")[["item", "rating", "timestamp"]].reset_index(drop=True)


def run_config(adapter_dir: str | Path, config_file: str | Path | None = None) -> FedRecConfig:
    """The run's configuration: ``config_file``, else ``config.toml`` beside the adapter folder."""
    if config_file is not None:
        path = Path(config_file).expanduser()
    else:
        path = Path(adapter_dir).expanduser().resolve().parent / "config.toml"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: no run config beside {adapter_dir}; pass --config FILE")
    values = read_config_file(path)
    try:
        return FedRecConfig.from_mapping(values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


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
    cfg, data, rated, scorer = _adapter_scorer(Path(adapter_dir).expanduser(), history, config)
    if retrieved is not None:
        pool = [item for item, _ in retrieved[1][: candidates or DEFAULT_RERANK]]
    else:
        pool = sorted(set(data.items["item"]) - set(rated["item"]))
        if candidates:
            counts = data.interactions["item"].value_counts().to_dict()
            pool = sorted(pool, key=lambda item: -counts.get(item, 0))[:candidates]  # ties stay in id order
    if not pool:
        raise RecommendError(f"the history rates every item of the catalog of '{data.name}': nothing to recommend")
    scores = _llm_scores(cfg, data, scorer, rated, pool, item_tables)
    if retrieved is not None:  # the adapter run's late fusion with the retriever (weight 0: the LLM's order)
        retriever = np.array([score for _, score in retrieved[1][: len(pool)]])
        scores = fused_scores(scores, retriever, cfg.evaluation.rerank_fusion_weight)
    best = np.argsort(-scores, kind="stable")[:k]
    titles = data.titles
    return [Recommendation(pool[i], titles[pool[i]], float(scores[i])) for i in best]


def _llm_scores(
    cfg: FedRecConfig,
    data: InteractionData,
    scorer: Scorer,
    rated: pd.DataFrame,
    pool: list[str],
    item_tables: str | Path | None,
) -> np.ndarray:
    """The adapter's score of each item of ``pool`` after the history; a hybrid adapter's
    soft tokens come from ``item_tables`` (default: the ones it was trained with) and the
    user folded in from the history, here.
    """
    liked = rated["rating"].to_numpy() > cfg.data.like_threshold
    recent = tuple(zip(rated["item"], liked.tolist(), strict=True))[-cfg.data.history_length :]
    examples = [PreferenceExample(LOCAL_USER, item, 0, recent) for item in pool]
    prompts = [render_preference_prompt(example, data.prompt_names, data.noun) for example in examples]
    signals = None
    if scorer.projector is not None:
        tables = item_tables or cfg.collaborative.item_tables
        user = rated.assign(user=LOCAL_USER)
        try:
            folded = FoldedInTables.from_file(
                tables, data.items["item"], user, cfg.data.like_threshold, [LOCAL_USER], cfg.collaborative.mf_dim
            )
        except ValueError as err:
            raise RecommendError(f"the adapter reads collaborative soft tokens (llm-input = 'hybrid'): {err}") from None
        signals = CollaborativeSignals(folded).of(examples)
    return scorer.score_candidates(scorer.encode(prompts), cfg.training.physical_batch_size, signals).numpy()


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


def _adapter_scorer(
    adapter_dir: Path, history: str | Path | pd.DataFrame, config: FedRecConfig | str | Path | None
) -> tuple[FedRecConfig, InteractionData, pd.DataFrame, Scorer]:
    """The adapter run's config, catalog, the checked history and the scorer holding the adapter."""
    try:
        if not adapter_dir.is_dir():
            problem = "is not a folder" if adapter_dir.exists() else "does not exist"
            raise AdapterMismatchError(f"adapter folder {adapter_dir} {problem}")
        cfg = config if isinstance(config, FedRecConfig) else run_config(adapter_dir, config)
        data = prompt_data(cfg.data)
        rated = load_history(history, data)
        scorer = scorer_for(cfg)
        load_adapter_folder(scorer, adapter_dir)  # names, shapes, dtypes and finite values checked
    except SafetensorError as err:
        raise RecommendError(f"{adapter_dir}: adapter_model.safetensors cannot be read: {err}") from None
    except (ConfigError, DataError, AdapterMismatchError, BackboneError) as err:
        raise RecommendError(str(err)) from None
    return cfg, data, rated, scorer


def format_recommendations(recommendations: list[Recommendation]) -> str:
    """A table of rank, item id, title and score."""
    item_width = max([len("item"), *(len(r.item) for r in recommendations)])
    title_width = max([len("title"), *(len(r.title) for r in recommendations)])
    lines = [f"{'rank':>4}  {'item':<{item_width}}  {'title':<{title_width}}  {'score':>8}"]
    for rank, r in enumerate(recommendations, start=1):
        lines.append(f"{rank:>4}  {r.item:<{item_width}}  {r.title:<{title_width}}  {r.score:>8.4f}")
    return "\n".join(lines)
