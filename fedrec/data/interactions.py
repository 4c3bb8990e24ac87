"""Loading user-item interactions and item text, with validation.

Sources: the MovieLens-100K copy inside the ``recbole`` package (``ml-100k``), a
RecBole atomic-file folder (``NAME.inter`` + ``NAME.item``), a GroupLens ML-1M folder
(``ratings.dat`` + ``movies.dat``), a CSV/TSV/Parquet file of
``user,item,rating,timestamp`` with an item table ``item,title[,genres]``, or a Hugging
Face dataset id prefixed ``hf:`` (needs internet).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")
ITEM_COLUMNS = ("item", "title")


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class InteractionData:
    """Validated interactions (``user, item, rating, timestamp``) and item table
    (``item, title, genres``); ids are strings.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    name: str
    noun: str = "items"  # what the items are called in prompts

    def titles(self) -> dict[str, str]:
        """Item id -> display title."""
        return dict(zip(self.items["item"], self.items["title"], strict=True))


def bundled_movielens_dir() -> Path:
    """Folder of MovieLens-100K inside the installed ``recbole`` package."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise DataError("dataset 'ml-100k' needs the recbole package: pip install --no-deps recbole")
    return Path(spec.origin).parent / "dataset_example" / "ml-100k"


def load_interaction_data(dataset: str, items_path: str = "") -> InteractionData:
    """Load and validate a dataset named by ``dataset`` (see module docstring)."""
    if dataset == "ml-100k":
        return replace(_load_atomic_dir(bundled_movielens_dir(), "ml-100k"), noun="movies")
    if dataset.startswith("hf:"):
        return _load_hub(dataset[3:], items_path)
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DataError(f"dataset {path} does not exist (nor is it 'ml-100k' or 'hf:<id>')")
    if path.is_dir():
        if (path / "ratings.dat").exists():
            return replace(_load_ml1m_dir(path), noun="movies")
        inter = sorted(path.glob("*.inter"))
        if len(inter) != 1:
            raise DataError(
                f"dataset folder {path} must hold ratings.dat+movies.dat or exactly one "
                f"*.inter file with its *.item file; found {len(inter)} *.inter files"
            )
        return _load_atomic_dir(path, inter[0].stem)
    if not items_path:
        raise DataError(f"dataset {path}: set 'items-path' to the item table (item,title[,genres])")
    return validate(read_table(path), read_table(Path(items_path).expanduser()), str(path), items_path)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV, TSV or Parquet table; a missing, empty or unparsable file is a ``DataError``."""
    if not path.exists():
        raise DataError(f"{path} does not exist")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        sep = "\t" if path.suffix in (".tsv", ".tab") else ","
        return pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        raise DataError(f"{path} cannot be parsed: {err}") from None


def _load_atomic_dir(folder: Path, name: str) -> InteractionData:
    """RecBole atomic files: tab separated, headers like ``user_id:token``."""
    inter_path, item_path = folder / f"{name}.inter", folder / f"{name}.item"
    for p in (inter_path, item_path):
        if not p.exists():
            raise DataError(f"{p} does not exist")
    try:
        inter = pd.read_csv(inter_path, sep="\t")
        items = pd.read_csv(item_path, sep="\t", quoting=3)
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{folder}: empty atomic file ({err})") from None
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items.columns = [c.split(":")[0] for c in items.columns]
    inter = inter.rename(columns={"user_id": "user", "item_id": "item"})
    items = items.rename(columns={"item_id": "item", "movie_title": "title", "class": "genres"})
    if "release_year" in items.columns and "title" in items.columns:
        year = items["release_year"].astype("string").fillna("")
        items["title"] = items["title"].astype("string") + year.map(lambda y: f" ({y})" if y else "")
    return validate(inter, items, str(inter_path), str(item_path))


def _load_ml1m_dir(folder: Path) -> InteractionData:
    """GroupLens ML-1M: ``ratings.dat`` (user::item::rating::ts), ``movies.dat``."""
    opts = {"sep": "::", "engine": "python", "header": None, "encoding": "latin-1"}
    inter = pd.read_csv(folder / "ratings.dat", names=list(INTERACTION_COLUMNS), **opts)
    items = pd.read_csv(folder / "movies.dat", names=["item", "title", "genres"], **opts)
    items["genres"] = items["genres"].str.replace("|", " ")
    return validate(inter, items, str(folder / "ratings.dat"), str(folder / "movies.dat"))


def _load_hub(dataset_id: str, items_path: str) -> InteractionData:
    from datasets import load_dataset

    frame = load_dataset(dataset_id, split="train").to_pandas()
    if items_path:
        items = read_table(Path(items_path).expanduser())
    elif "title" in frame.columns:
        items = frame[["item", "title"]].drop_duplicates("item")
    else:
        raise DataError(f"hub dataset {dataset_id} has no 'title' column; set 'items-path'")
    return validate(frame, items, f"hf:{dataset_id}", items_path or f"hf:{dataset_id}")


def validate(inter: pd.DataFrame, items: pd.DataFrame, inter_src: str, items_src: str) -> InteractionData:
    """Check columns, types, emptiness, duplicates and references; normalise dtypes."""
    missing = [c for c in INTERACTION_COLUMNS if c not in inter.columns]
    if missing:
        raise DataError(f"{inter_src}: missing column(s) {missing}; found {list(inter.columns)}")
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise DataError(f"{items_src}: missing column(s) {missing}; found {list(items.columns)}")
    if inter.empty:
        raise DataError(f"{inter_src}: no interactions")
    if items.empty:
        raise DataError(f"{items_src}: no items")
    inter = inter[list(INTERACTION_COLUMNS)].copy()
    for col in ("rating", "timestamp"):
        values = pd.to_numeric(inter[col], errors="coerce")
        bad = values.isna() & inter[col].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(f"{inter_src}: column '{col}' must be numeric; row {row} holds {inter[col].iloc[row]!r}")
        inter[col] = values.astype("float64")
    if inter.isna().any().any():
        col = inter.columns[inter.isna().any()].tolist()
        raise DataError(f"{inter_src}: empty values in column(s) {col}")
    for col in ("user", "item"):
        inter[col] = inter[col].astype("string")
    dup = inter.duplicated(["user", "item"])
    if dup.any():
        first = inter[dup].iloc[0]
        raise DataError(
            f"{inter_src}: {int(dup.sum())} duplicate (user, item) pairs, "
            f"e.g. user {first['user']} item {first['item']}"
        )
    items = items.copy()
    items["item"] = items["item"].astype("string")
    items["title"] = items["title"].astype("string").fillna("").str.strip()
    items["genres"] = items["genres"].astype("string").fillna("") if "genres" in items else ""
    dup_items = items.duplicated("item")
    if dup_items.any():
        raise DataError(
            f"{items_src}: {int(dup_items.sum())} duplicate item ids, e.g. {items[dup_items]['item'].iloc[0]}"
        )
    unknown = ~inter["item"].isin(items["item"])
    if unknown.any():
        raise DataError(
            f"{inter_src}: {int(unknown.sum())} interactions name items missing from "
            f"{items_src}, e.g. item {inter[unknown]['item'].iloc[0]}"
        )
    items = items[["item", "title", "genres"]].reset_index(drop=True)
    return InteractionData(inter.reset_index(drop=True), items, Path(inter_src).stem)
