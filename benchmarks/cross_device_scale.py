"""Round wall time of fedrec's harness with many per-user clients (tiny model), beside
Flower's own message floor on the same nodes, and the server's memory versus the size of
the federation.

Every setting runs ``fedrec simulate`` (smoke preset: tiny-llama, record-level DP-SGD, 6
training examples per user) on a synthetic dataset written here: ``--users`` users with 12
ratings each, one client per user (``partitioner = "user"``), ``n`` of them sampled per
round (``client-sampling = "fixed"``: exactly ``n``), 2 rounds, no central evaluation.
Modes: ``plain`` (FedAvg), ``secagg`` (SecAgg+), ``secagg-user-dp`` (SecAgg+ with
client-level, i.e. user-level, DP and distributed noise). Round 1 includes starting the
client processes and loading the model; round 2 is the steady round. The floor is a Flower
app on the same number of nodes whose ClientApp returns the adapter-sized arrays it got:
what Flower's simulation costs per round before any fedrec code runs.

    python benchmarks/cross_device_scale.py                          # 10, 100, 1000 of 1000 users
    python benchmarks/cross_device_scale.py --users 50 --sampled 10 --modes plain
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedrec.config import resolve_config
from fedrec.simulation.engine import FlowerApp
from fedrec.simulation.runner import run_apps, simulate

RESULTS = Path(__file__).parent / "results" / "cross_device_scale"
MODES = {
    "plain": {},
    "secagg": {"secure-aggregation": True, "max-weight": 100.0},
    "secagg-user-dp": {
        "secure-aggregation": True,
        "client-dp": True,
        "client-dp-noise": "distributed",
        "client-dp-clip": 0.5,
    },
}


def write_dataset(folder: Path, users: int, items: int = 200, per_user: int = 12, seed: int = 0) -> list[str]:
    """A synthetic ratings file and catalog; returns the config overrides that read them."""
    rng = np.random.default_rng(seed)
    rows = ["user,item,rating,timestamp"]
    for user in range(users):
        for t, item in enumerate(rng.choice(items, per_user, replace=False)):
            rows.append(f"u{user},{item},{rng.integers(1, 6)},{t}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item,title\n" + "".join(f"{i},Item {i}\n" for i in range(items)))
    return [str(folder / "ratings.csv"), str(folder / "items.csv")]


def run_fedrec(folder: Path, users: int, sampled: int, mode: str, paths: list[str]) -> dict:
    """One ``fedrec simulate`` run; its rounds' seconds and the server's resident memory."""
    overrides = {
        "dataset": paths[0],
        "items-path": paths[1],
        "max-users": 0,
        "eval-users": 10,
        "partitioner": "user",
        "num-clients": users,
        "fraction-train": sampled / users,
        "central-eval": False,
        "ranking-users": 0,
        "round-timeout": 3000.0,
        "out": str(folder / f"{mode}-{sampled}-of-{users}"),
        **MODES[mode],
    }
    started = time.perf_counter()
    out, summary = simulate(resolve_config("smoke", overrides=overrides), echo=None)
    wall = time.perf_counter() - started
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["clients_ok"] for r in rounds[1:]] == [sampled, sampled], f"{mode}: not every client trained"
    return {
        "round_seconds": [r["seconds"] for r in rounds[1:]],
        "server_rss_bytes": [r["server_rss_bytes"] for r in rounds],
        "wall_seconds": wall,
        "adapter_bytes": summary["bytes"]["adapter"],
    }


floor_client = ClientApp()


@floor_client.train()
def _echo(msg: Message, context: Context) -> Message:
    content = RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})})
    return Message(content, reply_to=msg)


class _TimedFedAvg(FedAvg):
    """FedAvg that keeps each round's wall time, from ``configure_train`` to its aggregate."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seconds: list[float] = []
        self._started = 0.0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._started = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        result = super().aggregate_train(server_round, replies)
        self.seconds.append(time.perf_counter() - self._started)
        return result


floor_server = ServerApp()


@floor_server.main()
def _floor(grid: Grid, context: Context) -> None:
    users, sampled, floats = (int(context.run_config[k]) for k in ("users", "sampled", "floats"))
    deadline = time.monotonic() + 600
    while len(list(grid.get_node_ids())) < users and time.monotonic() < deadline:
        time.sleep(0.5)
    strategy = _TimedFedAvg(fraction_train=sampled / users, fraction_evaluate=0.0, min_available_nodes=users)
    initial = ArrayRecord({"w": Array(np.zeros(floats, dtype=np.float32))})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=2, train_config=ConfigRecord())
    Path(str(context.run_config["out"])).write_text(json.dumps(strategy.seconds))


def run_floor(users: int, sampled: int, floats: int) -> list[float]:
    """Flower's rounds with an echoing ClientApp on ``users`` nodes, ``sampled`` per round."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    scratch = Path(tempfile.mkdtemp(prefix="scale-floor-"))
    config = {"users": users, "sampled": sampled, "floats": floats, "out": str(scratch / "seconds.json")}
    federation = {"num-supernodes": users, "client-resources-num-cpus": 1, "init-args-num-cpus": os.cpu_count() or 1}
    run_apps(FlowerApp(config, "cross_device_scale:floor_server", "cross_device_scale:floor_client"), federation,
             scratch, echo=None)  # fmt: skip
    return json.loads((scratch / "seconds.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000, help="users, one client each")
    parser.add_argument("--sampled", type=int, nargs="+", default=[10, 100, 1000], help="clients per round")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--memory-users", type=int, nargs="*", default=[100], help="other federation sizes, plain")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="scale-"))
    rows, memory = [], []
    for users in args.memory_users:
        small = folder / f"users-{users}"
        small.mkdir()
        run = run_fedrec(small, users, args.sampled[0], "plain", write_dataset(small, users))
        memory.append({"users": users, "sampled": args.sampled[0], **run})
    paths = write_dataset(folder, args.users)
    for sampled in args.sampled:
        row: dict = {"users": args.users, "sampled": sampled}
        for mode in args.modes:
            row[mode] = run_fedrec(folder, args.users, sampled, mode, paths)
            print(json.dumps({"sampled": sampled, mode: row[mode]}), flush=True)
        row["floor_round_seconds"] = run_floor(args.users, sampled, row[args.modes[0]]["adapter_bytes"] // 4)
        rows.append(row)
        _write(args, rows, memory)


def _write(args: argparse.Namespace, rows: list[dict], memory: list[dict]) -> None:
    report = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "users": args.users, "rows": rows}
    report["memory"] = memory
    (RESULTS / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "report.md").write_text(render(report))


def render(report: dict) -> str:
    """The timing table (steady round 2) and the memory table."""
    modes = [m for m in MODES if report["rows"] and m in report["rows"][0]]
    ratio_heads = " | ".join(f"{m} / plain" for m in modes[1:])
    lines = [
        f"# Cross-device scale ({report['machine']}; tiny-llama, {report['users']} per-user clients)",
        "",
        "Round 2 (steady) seconds; round 1 in brackets (client processes start, the model loads). "
        "Per client-round: (round 2 − floor round 2) / clients per round.",
        "",
        "| clients per round | " + " | ".join(modes) + f" | Flower floor | {ratio_heads}"
        " | fedrec plain overhead per client-round s | plain / floor |",
        "|---" * (len(modes) * 2 + 3) + "|",
    ]
    for row in report["rows"]:
        steady = {m: row[m]["round_seconds"][1] for m in modes}
        floor = row["floor_round_seconds"][1]
        cells = [f"{steady[m]:.2f} ({row[m]['round_seconds'][0]:.1f})" for m in modes]
        ratios = [f"{steady[m] / steady[modes[0]]:.2f}" for m in modes[1:]]
        overhead = (steady[modes[0]] - floor) / row["sampled"]
        lines.append(
            f"| {row['sampled']} | "
            + " | ".join(cells)
            + f" | {floor:.2f} ({row['floor_round_seconds'][0]:.1f}) | "
            + " | ".join(ratios)
            + f" | {overhead:.3f} | {steady[modes[0]] / floor:.1f} |"
        )
    lines += ["", "| federation size | clients per round | server resident MiB after rounds 0, 1, 2 |", "|---|---|---|"]
    sizes = [(r["users"], r["sampled"], r["plain"]["server_rss_bytes"]) for r in report["rows"] if "plain" in r]
    sizes += [(m["users"], m["sampled"], m["server_rss_bytes"]) for m in report["memory"]]
    for users, sampled, resident in sorted(sizes):
        lines.append(f"| {users} | {sampled} | " + ", ".join(f"{b / 2**20:.0f}" for b in resident) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
