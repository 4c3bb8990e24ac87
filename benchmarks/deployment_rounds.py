"""Round wall time of a preset on real SuperNodes, with and without the nodes' on-disk
prefix cache (node config ``state-dir``), measured side by side in one run.

A Flower 1.41 SuperNode starts a fresh ClientApp process for every message, so without
the cache every round recomputes the frozen prefix of all of the node's prompts. Each
variant starts its own insecure SuperLink and SuperNodes on 127.0.0.1 (TLS and node
authentication do not change round times measurably; they are tested in
``tests/test_deployment.py``), submits ``flwr run`` and reads each round's seconds from
``rounds.jsonl``. Every process is stopped by its process group.

    python benchmarks/deployment_rounds.py                   # demo preset, 2 rounds per variant
    python benchmarks/deployment_rounds.py --preset smoke --out /tmp/deployment
    python benchmarks/deployment_rounds.py --preset smoke --rounds 4 --variant prefix-cache \
        --set secure-aggregation=true --set max-weight=100      # SecAgg+ stages per round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
import torch

from fedrec.config import parse_overrides, resolve_config
from fedrec.deploy.commands import superlink_command, supernode_command
from fedrec.deploy.connection import write_connection
from fedrec.deploy.processes import flower_environment, free_local_ports

ROOT = Path(__file__).parents[1]
VENV_BIN = Path(sys.executable).parent
CONNECTION = "fedrec-benchmark"
VARIANTS = {"no-prefix-cache": False, "prefix-cache": True}  # nodes with state-dir or without


def _wait_for_port(port: int, seconds: float) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (the SuperLink, before ``flwr run``)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s") from None
            time.sleep(0.2)


def run_variant(folder: Path, run_config: dict, num_nodes: int, prefix_cache: bool, limit: float) -> list[dict]:
    """One SuperLink and ``num_nodes`` SuperNodes; returns the run's ``rounds.jsonl``."""
    folder.mkdir(parents=True)
    # one machine stands in for several: each node's torch gets its share of the cores
    threads = str(max(1, (os.cpu_count() or 1) // num_nodes))
    env = flower_environment(folder / "flwr-home") | {"OMP_NUM_THREADS": threads}
    link_port, *runtime_ports = free_local_ports(num_nodes + 1)
    commands = {"superlink": superlink_command(None, "127.0.0.1", link_port)}
    for i in range(num_nodes):
        node_config = [f"state-dir='{folder / f'node-{i}'}'"] if prefix_cache else []
        commands[f"supernode-{i}"] = supernode_command(
            f"127.0.0.1:{link_port}", i, num_nodes, None, None, runtime_ports[i], node_config
        )
    processes = []
    try:
        for name, command in commands.items():
            with open(folder / f"{name}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                )
        _wait_for_port(link_port, seconds=60)
        os.environ["FLWR_HOME"] = env["FLWR_HOME"]
        write_connection(CONNECTION, f"127.0.0.1:{link_port}", None)
        out = folder / "run"
        config_file = folder / "run-config.toml"
        config_file.write_text(tomli_w.dumps({**run_config, "out": str(out)}))
        command = [str(VENV_BIN / "flwr"), "run", str(ROOT), CONNECTION, "--run-config", str(config_file), "--stream"]
        with open(folder / "flwr-run.log", "wb") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=limit, check=False)
        if not (out / "summary.json").exists():
            raise RuntimeError(f"the run did not finish; see {folder}/*.log")
        return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    finally:
        for process in processes:  # each in its own group, with the helpers it started
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "deployment_rounds.json")
    parser.add_argument("--limit", type=float, default=3600.0, help="seconds allowed per variant")
    parser.add_argument("--variant", choices=(*VARIANTS, "both"), default="both")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override")
    args = parser.parse_args()
    # stop the federation's processes (the finally below) on SIGTERM, and on SIGINT even
    # when started in the background, where the shell ignores it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the cache serves the rounds after the first")
    overrides = {"num-server-rounds": args.rounds, "ranking-users": 0, **parse_overrides(args.set)}
    cfg = resolve_config(args.preset, overrides=overrides)
    work = args.out or Path(tempfile.mkdtemp(prefix="fedrec-deployment-"))
    variants = {}
    chosen = VARIANTS if args.variant == "both" else {args.variant: VARIANTS[args.variant]}
    for name, prefix_cache in chosen.items():
        started = time.perf_counter()
        rounds = run_variant(work / name, cfg.to_run_config(), cfg.federation.num_clients, prefix_cache, args.limit)
        variants[name] = {
            "round_seconds": [r["seconds"] for r in rounds[1:]],
            "stages": [sorted(r.get("bytes_by_stage") or {}) for r in rounds[1:]],
            "auc": [r["auc"] for r in rounds],
            "wall_seconds": time.perf_counter() - started,
        }
        print(f"{name}: rounds {', '.join(f'{s:.1f}' for s in variants[name]['round_seconds'])} s", flush=True)
    later = {name: sum(v["round_seconds"][1:]) / (args.rounds - 1) for name, v in variants.items()}
    results = {
        "command": f"python benchmarks/deployment_rounds.py --preset {args.preset} --rounds {args.rounds} "
        f"--variant {args.variant}" + "".join(f" --set {pair}" for pair in args.set),
        "preset": args.preset,
        "nodes": cfg.federation.num_clients,
        "rounds": args.rounds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "variants": variants,
        "later_rounds_seconds": later,
    }
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"mean of the rounds after the first: {later}", flush=True)


if __name__ == "__main__":
    main()
