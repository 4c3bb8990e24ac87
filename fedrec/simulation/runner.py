"""Running a configuration through Flower's simulation engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from ..client.app import build_client_app
from ..config import FedRecConfig, read_config_file
from ..server.app import build_server_app, default_out_dir
from ..server.checkpoint import read_checkpoint
from ..server.results import check_resumable


def backend_config(cfg: FedRecConfig) -> dict[str, Any]:
    """Ray backend: the machine's CPUs, and per-client CPUs / GPU fraction."""
    init_args: dict[str, Any] = {"num_cpus": os.cpu_count() or 1}
    if cfg.client_gpus > 0:
        import torch

        init_args["num_gpus"] = torch.cuda.device_count()
    return {
        "client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": cfg.client_gpus},
        "init_args": init_args,
    }


def simulate(cfg: FedRecConfig, verbose: bool = False) -> tuple[Path, dict[str, Any]]:
    """Run a federated simulation; returns the results folder and its summary."""
    out = Path(cfg.out or default_out_dir()).expanduser().resolve()
    cfg = cfg.replace(out=str(out), client_state_dir=cfg.client_state_dir or str(out / "nodes"))
    run_config = cfg.to_run_config()
    if cfg.resume:  # refuse before the engine starts
        check_resumable(out, run_config)
        read_checkpoint(out)
    run_simulation(
        server_app=build_server_app(run_config),
        client_app=build_client_app(run_config),
        num_supernodes=cfg.num_clients,
        backend_config=backend_config(cfg),
        verbose_logging=verbose,
    )
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without writing {summary_path}; see the log above")
    return out, json.loads(summary_path.read_text())


def resume(run_folder: str | Path, verbose: bool = False) -> tuple[Path, dict[str, Any]]:
    """Continue an interrupted simulation from its checkpoint, with its own settings."""
    folder = Path(run_folder).expanduser().resolve()
    cfg = FedRecConfig.from_mapping(read_config_file(folder / "config.toml"))
    return simulate(cfg.replace(out=str(folder), resume=True), verbose)
