"""The inputs of on-device recommendation: one user's history file and the run's
configuration, read and checked, and the error that names a bad input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError, FedRecConfig, read_config_file
from ..data.interactions import DataError, InteractionData, Source, read_table, validate

LOCAL_USER = "(local)"
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


class RecommendError(ValueError):
    """An input of :func:`recommend` (adapter folder, run config, history, k) is missing or malformed."""


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
