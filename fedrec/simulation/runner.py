"""Running a configuration as a Flower simulation (``flwr run`` on a local SuperLink,
see :mod:`.engine`), then adding the harness's baselines to its summary.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import FedRecConfig, read_config_file
from ..files import write_atomic
from ..server.results import default_out_dir, failure, json_safe, mark_failed, set_aside_failed
from .baselines import harness_baselines, paired_with_model
from .engine import FlowerApp, LocalSuperLink, flwr_run
from .preflight import preflight

FLOWER_LOG = "flower.log"  # Flower's log stream of the run, in its results folder
SUPERLINK_LOG = "superlink.log"


class SimulationError(RuntimeError):
    """A simulation ended without its summary."""


def federation_config(cfg: FedRecConfig, verbose: bool = False) -> dict[str, Any]:
    """Flower's simulation settings: the clients, the machine's CPUs (and GPUs when
    clients ask for them), per-client CPUs and GPU fraction. Flower's simulation config
    counts a client's CPUs in whole CPUs: a fraction is rounded up.
    """
    config: dict[str, Any] = {
        "num-supernodes": cfg.federation.num_clients,
        "client-resources-num-cpus": math.ceil(cfg.federation.client_cpus),
        "client-resources-num-gpus": cfg.federation.client_gpus,
        "init-args-num-cpus": os.cpu_count() or 1,
        "verbose": verbose,
    }
    if cfg.federation.client_gpus > 0:
        import torch

        config["init-args-num-gpus"] = torch.cuda.device_count()
    return config


def absolute_paths(cfg: FedRecConfig) -> FedRecConfig:
    """``cfg`` with its results folder, client state folder, local data, table and store paths absolute
    (the Flower processes resolve them from another working directory).
    """
    out = Path(cfg.server.out or default_out_dir()).expanduser().resolve()
    changes: dict[str, Any] = {"out": str(out), "client_state_dir": cfg.server.client_state_dir or str(out / "nodes")}
    changes["client_state_dir"] = str(Path(changes["client_state_dir"]).expanduser().resolve())
    dataset = Path(cfg.data.dataset).expanduser()
    if dataset.exists():
        changes["dataset"] = str(dataset.resolve())
    paths = (
        ("items_path", cfg.data.items_path),
        ("item_tables", cfg.collaborative.item_tables),
        ("eval_prefix_store", cfg.evaluation.eval_prefix_store),
    )
    for key, path in paths:
        if path:
            changes[key] = str(Path(path).expanduser().resolve())
    return cfg.replace(**changes)


def run_apps(app: FlowerApp, federation: dict[str, Any], out: Path, echo: Callable[[str], None] | None) -> None:
    """Run ``app`` on a local SuperLink of its own, logging into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with LocalSuperLink(out / SUPERLINK_LOG) as superlink, open(out / FLOWER_LOG, "a") as log:
        flwr_run(superlink, app, federation, log, echo)


def simulate(
    cfg: FedRecConfig, verbose: bool = False, echo: Callable[[str], None] | None = print
) -> tuple[Path, dict[str, Any]]:
    """Run a federated simulation; returns the results folder and its summary (with the
    harness's baselines). ``echo`` receives the run's progress lines. Its inputs are
    checked (:func:`.preflight.preflight`) before anything is written or started; a run
    that ends without its summary is marked failed (:func:`~fedrec.server.results.mark_failed`).
    Resuming a run that was interrupted while its summary was completed completes it.
    """
    cfg = absolute_paths(cfg)
    out = Path(cfg.server.out)
    if cfg.server.resume and summary_incomplete(out):
        return out, complete_summary(cfg, out)
    preflight(cfg)
    aside = None if cfg.server.resume else set_aside_failed(out)
    if aside is not None and echo is not None:
        echo(f"[fedrec] the failed run that was in {out} is now in {aside}")
    run_apps(FlowerApp(cfg.to_run_config()), federation_config(cfg, verbose), out, echo)
    if not (out / "summary.json").exists():
        reason = failure(out)
        if reason is None:
            reason = "the simulation ended without writing summary.json"
            mark_failed(out, reason)
        raise SimulationError(f"the run failed: {reason} (see {out / FLOWER_LOG})")
    return out, complete_summary(cfg, out)


def summary_incomplete(out: Path) -> bool:
    """Whether the ServerApp wrote ``out``'s summary but the harness has not yet added its baselines."""
    path = out / "summary.json"
    return path.exists() and "baselines" not in json.loads(path.read_text())


def complete_summary(cfg: FedRecConfig, out: Path) -> dict[str, Any]:
    """Add the harness's baselines and the paired differences to ``out``'s summary."""
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) | harness_baselines(cfg)
    summary = json_safe(summary | paired_with_model(summary))  # NaN: undefined, null
    write_atomic(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def resume(
    run_folder: str | Path, verbose: bool = False, echo: Callable[[str], None] | None = print
) -> tuple[Path, dict[str, Any]]:
    """Continue an interrupted simulation from its checkpoint, with its own settings."""
    return simulate(resume_config(run_folder), verbose, echo)


def resume_config(run_folder: str | Path) -> FedRecConfig:
    """The settings of an interrupted run in ``run_folder``, set to resume it."""
    folder = Path(run_folder).expanduser().resolve()
    cfg = FedRecConfig.from_mapping(read_config_file(folder / "config.toml"))
    return cfg.replace(out=str(folder), resume=True)
