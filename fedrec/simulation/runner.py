"""Running a configuration through Flower's simulation engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from ..client.app import build_client_app
from ..config import FedRecConfig
from ..server.app import build_server_app, default_out_dir


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
    cfg = cfg.replace(out=str(out))
    run_config = cfg.to_run_config()
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
