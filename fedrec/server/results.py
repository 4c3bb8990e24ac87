"""The results folder of a run: ``config.toml``, ``rounds.jsonl``,
``summary.json``, ``adapter/`` and ``plots/``.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from ..files import write_atomic

RESULT_FILES = ("config.toml", "rounds.jsonl", "summary.json")
CHECKPOINT_DIR = "checkpoint"  # the server's state after the latest round (see .checkpoint)
PRIVACY_FILE = "privacy.jsonl"  # each client's epsilon and ledger per round (see .privacy_log)
FAILED_FILE = "failed.json"  # why the run ended without its summary (see mark_failed)


def default_out_dir() -> Path:
    """``runs/<UTC timestamp>`` under the working directory."""
    return Path("runs") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


class ResultsFolderError(ValueError):
    """The results folder cannot be used (it holds a finished or a resumable run)."""


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (epsilon of a non-private run is infinite) by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def check_fresh(folder: str | Path) -> None:
    """Refuse a results folder that holds a finished run, or an interrupted one that can
    be resumed. A start that failed before its first checkpoint left nothing to keep: a
    new run may take its folder; so may it that of a run marked failed, which it sets
    aside (:func:`set_aside_failed`).
    """
    folder = Path(folder).expanduser().resolve()
    if (folder / "summary.json").exists():
        raise ResultsFolderError(f"{folder} already holds a finished run (summary.json); choose another --out")
    if (folder / CHECKPOINT_DIR).exists() and failure(folder) is None:
        raise ResultsFolderError(
            f"{folder} holds an interrupted run: continue it with `fedrec simulate --resume {folder}`, "
            "or choose another --out"
        )


def mark_failed(folder: str | Path, reason: str) -> None:
    """Record in ``folder`` that its run failed, and why (one line)."""
    document = {"reason": reason, "time": datetime.now(UTC).isoformat(timespec="seconds")}
    write_atomic(Path(folder) / FAILED_FILE, json.dumps(document) + "\n")


def failure(folder: str | Path) -> str | None:
    """Why the run in ``folder`` failed, or None when it is not marked failed."""
    path = Path(folder) / FAILED_FILE
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {path}"


def check_resumable(folder: str | Path, run_config: Mapping[str, Any]) -> None:
    """Refuse to resume a finished run, or one whose ``config.toml`` differs from
    ``run_config`` (``resume`` aside).
    """
    folder = Path(folder)
    if (folder / "summary.json").exists():
        raise ResultsFolderError(f"{folder} holds a finished run (summary.json); nothing to resume")
    try:
        stored = tomllib.loads((folder / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ResultsFolderError(f"{folder} cannot be resumed: {err}") from None
    keys = (stored.keys() | run_config.keys()) - {"resume"}
    differ = sorted(k for k in keys if stored.get(k) != run_config.get(k))
    if differ:
        raise ResultsFolderError(f"{folder} was run with other settings ({', '.join(differ)}); cannot resume")


def set_aside_failed(folder: Path) -> Path | None:
    """Rename the folder of a run marked failed to ``<name>.failed-<n>`` beside it
    (nothing of it is lost); returns the new path, or None when it holds no failed run.
    """
    if failure(folder) is None:
        return None
    number = 1
    while (aside := folder.with_name(f"{folder.name}.failed-{number}")).exists():
        number += 1
    folder.rename(aside)
    return aside


class ResultsWriter:
    """Creates the folder (refusing one that holds a finished or resumable run, setting
    aside one whose run failed) and writes into it.

    ``resume_after``: reopen a run's folder to continue after that round; its
    ``config.toml`` must match ``run_config`` (``resume`` aside), and ``rounds.jsonl``
    keeps rounds up to ``resume_after`` (later lines, of a round the checkpoint does
    not hold, are dropped).
    """

    def __init__(self, folder: str | Path, run_config: Mapping[str, Any], resume_after: int | None = None) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.rounds: list[dict[str, Any]] = []
        self.set_aside: Path | None = None  # where a failed run's folder was moved
        if resume_after is not None:
            self._reopen(dict(run_config), resume_after)
            return
        check_fresh(self.folder)
        self.set_aside = set_aside_failed(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in (*RESULT_FILES, PRIVACY_FILE):  # of a start that failed before its first checkpoint
            (self.folder / stale).unlink(missing_ok=True)
        write_atomic(self.folder / "config.toml", tomli_w.dumps(dict(run_config)))

    def _reopen(self, run_config: dict[str, Any], resume_after: int) -> None:
        check_resumable(self.folder, run_config)
        (self.folder / FAILED_FILE).unlink(missing_ok=True)  # resumed: no longer failed (until it fails again)
        try:
            lines = (self.folder / "rounds.jsonl").read_text().splitlines()
        except OSError as err:
            raise ResultsFolderError(f"{self.folder} cannot be resumed: {err}") from None
        rounds = [json.loads(line) for line in lines if line.strip()]
        self.rounds = [r for r in rounds if r["round"] <= resume_after]
        if [r["round"] for r in self.rounds] != list(range(resume_after + 1)):
            raise ResultsFolderError(f"{self.folder}/rounds.jsonl lacks rounds up to {resume_after}; cannot resume")
        write_atomic(self.folder / "rounds.jsonl", "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.rounds))
        privacy = self.folder / PRIVACY_FILE
        if privacy.exists():  # lines of rounds the checkpoint holds
            kept = [line for line in privacy.read_text().splitlines() if json.loads(line)["round"] <= resume_after]
            write_atomic(privacy, "".join(line + "\n" for line in kept))

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Add one line to ``rounds.jsonl`` (flushed at once)."""
        self.rounds.append(dict(record))
        with open(self.folder / "rounds.jsonl", "a") as handle:
            handle.write(json.dumps(json_safe(record), allow_nan=False) + "\n")

    def append_privacy(self, lines: list[Mapping[str, Any]]) -> None:
        """Add the round's client privacy lines to ``privacy.jsonl`` (flushed at once)."""
        if not lines:
            return
        with open(self.folder / PRIVACY_FILE, "a") as handle:
            handle.write("".join(json.dumps(json_safe(line), allow_nan=False) + "\n" for line in lines))

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` atomically."""
        path = self.folder / "summary.json"
        write_atomic(path, json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
        return path

    def write_plots(self) -> list[Path]:
        """PNGs of accuracy, epsilon and bytes per round, and accuracy vs epsilon."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plots = self.folder / "plots"
        plots.mkdir(exist_ok=True)
        rounds = [r["round"] for r in self.rounds]

        def series(key: str) -> list[float]:
            return [math.nan if r.get(key) is None else float(r[key]) for r in self.rounds]

        charts = {
            "accuracy_vs_round.png": (rounds, series("auc"), "round", "AUC"),
            "epsilon_vs_round.png": (rounds, series("epsilon_max"), "round", "epsilon (max over clients)"),
            "accuracy_vs_epsilon.png": (series("epsilon_max"), series("auc"), "epsilon (max over clients)", "AUC"),
            "bytes_per_round.png": (
                rounds,
                [u + d for u, d in zip(series("bytes_up"), series("bytes_down"), strict=True)],
                "round",
                "bytes (up + down)",
            ),
        }
        written = []
        for name, (x, y, xlabel, ylabel) in charts.items():
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot(x, y, marker="o")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(plots / name, dpi=100)
            plt.close(fig)
            written.append(plots / name)
        return written
