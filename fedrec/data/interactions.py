"""Loading user-item interactions and item text, with validation.

Sources: the MovieLens-100K copy inside the ``recbole`` package (``ml-100k``), a
RecBole atomic-file folder (``NAME.inter`` + ``NAME.item``), a GroupLens ML-1M folder
(``ratings.dat`` + ``movies.dat``), a CSV/TSV/Parquet file of
``user,item,rating,timestamp`` with an item table ``item,title[,genres]``, or a Hugging
Face dataset id prefixed ``hf:`` (needs internet).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from ..config import ITEM_TEXTS

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")
ITEM_COLUMNS = ("item", "title")


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Source:
    """Where a table came from, for error messages: its name and the 1-based file line
    of its first data row (``None``: not a text file, rows are counted instead).
    """

    name: str
    first_line: int | None = 2

    @classmethod
    def of(cls, path: Path | str) -> Source:
        """A table file read by :func:`read_table`: a header line, unless Parquet."""
        return cls(str(path), None if Path(path).suffix == ".parquet" else 2)

    def at(self, row: int) -> str:
        """``NAME line N`` (or ``row N``) of the 0-based data row ``row``."""
        if self.first_line is None:
            return f"{self.name} row {row + 1}"
        return f"{self.name} line {row + self.first_line}"


@dataclass(frozen=True)
class InteractionData:
    """Validated interactions (``user, item, rating, timestamp``) and item table
    (``item, title, genres``); ids are strings.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    name: str
    noun: str = "items"  # what the items are called in prompts
    item_text: str = "title"  # what prompts name an item by (config ``item-text``)

    def __post_init__(self) -> None:
        if self.item_text not in ITEM_TEXTS:
            raise DataError(f"item-text must be one of {', '.join(ITEM_TEXTS)}; got {self.item_text!r}")

    @cached_property
    def titles(self) -> Mapping[str, str]:
        """Item id -> display title (read-only; built once: every client round renders prompts)."""
        return MappingProxyType(dict(zip(self.items["item"], self.items["title"], strict=True)))

    @cached_property
    def prompt_names(self) -> Mapping[str, str]:
        """Item id -> the item's name in prompts: its title, and under ``item-text =
        "title-genres"`` its genres after it (``Babe (1995) [Children's, Comedy, Drama]``;
        the title alone for an item without genres). Read-only, built once.
        """
        if self.item_text == "title":
            return self.titles
        names = {}
        for item, title, genres in zip(self.items["item"], self.items["title"], self.items["genres"], strict=True):
            listed = ", ".join(genre_list(genres))
            names[item] = f"{title} [{listed}]" if listed else title
        return MappingProxyType(names)


def genre_list(genres: str) -> list[str]:
    """An item table's genres cell as a list: separated by ``|`` or commas where it has
    them (``Science Fiction|Drama``), else by white space (ML-100K's ``Drama Sci-Fi``).
    """
    separator = r"[|,]" if re.search(r"[|,]", genres) else r"\s+"
    return [genre.strip() for genre in re.split(separator, genres) if genre.strip()]


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
    items = Path(items_path).expanduser()
    return validate(read_table(path), read_table(items), Source.of(path), Source.of(items))


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
    return validate(inter, items, Source(str(inter_path)), Source(str(item_path)))


def _load_ml1m_dir(folder: Path) -> InteractionData:
    """GroupLens ML-1M: ``ratings.dat`` (user::item::rating::ts), ``movies.dat``."""
    opts = {"sep": "::", "engine": "python", "header": None, "encoding": "latin-1"}
    inter = pd.read_csv(folder / "ratings.dat", names=list(INTERACTION_COLUMNS), **opts)
    items = pd.read_csv(folder / "movies.dat", names=["item", "title", "genres"], **opts)
    items["genres"] = items["genres"].str.replace("|", " ")
    return validate(inter, items, Source(str(folder / "ratings.dat"), 1), Source(str(folder / "movies.dat"), 1))


def _load_hub(dataset_id: str, items_path: str) -> InteractionData:
    from datasets import load_dataset

    frame = load_dataset(dataset_id, split="train").to_pandas()
    if items_path:
        items = read_table(Path(items_path).expanduser())
    elif "title" in frame.columns:
        items = frame[["item", "title"]].drop_duplicates("item")
    else:
        raise DataError(f"hub dataset {dataset_id} has no 'title' column; set 'items-path'")
    hub = Source(f"hf:{dataset_id}", None)
    return validate(frame, items, hub, Source.of(items_path) if items_path else hub)


def validate(inter: pd.DataFrame, items: pd.DataFrame, inter_src: Source, items_src: Source) -> InteractionData:
    """Check columns, types, values, emptiness, duplicates and references; normalise
    dtypes. Errors name the file and the line (or row) of the first offending entry.
    """
    for frame, src, columns in ((inter, inter_src, INTERACTION_COLUMNS), (items, items_src, ITEM_COLUMNS)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"{src.name}: missing column(s) {missing}; found {[str(c) for c in frame.columns]}")
        if frame.empty:
            raise DataError(f"{src.name}: no {'interactions' if frame is inter else 'items'}")
    inter = _checked_interactions(inter[list(INTERACTION_COLUMNS)].copy(), inter_src)
    dup = inter.duplicated(["user", "item"])
    if dup.any():
        first = int(dup.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{inter_src.at(first)}: duplicate (user, item) pair: user {inter['user'].iloc[first]} item "
            f"{inter['item'].iloc[first]} ({int(dup.sum())} duplicates in all)"
        )
    items = items.copy()
    if items["item"].isna().any():
        raise DataError(f"{items_src.at(int(items['item'].isna().to_numpy().nonzero()[0][0]))}: empty item id")
    items["item"] = items["item"].astype("string")
    items["title"] = items["title"].astype("string").fillna("").str.strip()
    items["genres"] = items["genres"].astype("string").fillna("") if "genres" in items else ""
    dup_items = items.duplicated("item")
    if dup_items.any():
        first = int(dup_items.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{items_src.at(first)}: duplicate item id {items['item'].iloc[first]} "
            f"({int(dup_items.sum())} duplicates in all)"
        )
    unknown = ~inter["item"].isin(items["item"])
    if unknown.any():
        first = int(unknown.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{inter_src.at(first)}: item {inter['item'].iloc[first]} is missing from {items_src.name} "
            f"({int(unknown.sum())} interactions name unknown items)"
        )
    items = items[["item", "title", "genres"]].reset_index(drop=True)
    return InteractionData(inter.reset_index(drop=True), items, Path(inter_src.name).stem)


def _checked_interactions(inter: pd.DataFrame, src: Source) -> pd.DataFrame:
    """Numeric, finite ratings and timestamps; no empty value; string ids."""
    for col in INTERACTION_COLUMNS:
        empty = inter[col].isna()
        if empty.any():
            raise DataError(f"{src.at(int(empty.to_numpy().nonzero()[0][0]))}: empty value in column '{col}'")
    for col in ("rating", "timestamp"):
        values = pd.to_numeric(inter[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            value = inter[col].iloc[row]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise DataError(f"{src.at(row)}: column '{col}' must be a finite number, found {shown}")
        inter[col] = values.astype("float64")
    for col in ("user", "item"):
        inter[col] = inter[col].astype("string")
    return inter
