"""Round wall time and bytes of secure vs plain aggregation, and vs Flower's legacy
``SecAggPlusWorkflow``, on the same adapter-sized vectors (real Flower simulations).

For each client count, one simulation runs plain FedAvg and fedrec's SecAgg+
(``SecAggGrid``) through the Message-API ``FedAvg``, alternating runs of ``--rounds``
rounds; a second runs Flower's ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``
with the legacy ``secaggplus_mod``, one round per workflow. Each client's "training"
adds a fixed random update, so the rounds measure aggregation alone. Both protocols use
5 shares, threshold 3, and the same clipping/quantization/modulus ranges.

A round is timed from the strategy's ``configure_train`` to the end of its
``aggregate_train``. fedrec's first round of a run includes the ``setup`` and
``share-keys`` stages; later rounds sample the same nodes and skip both (the nodes sent
keys with their masked inputs and shares with the previous ``unmask``): both are
reported. Flower's legacy workflow runs all four stages every round.

A third mode, the exchange floor, runs plain FedAvg whose train exchange follows one
exchange of empty query messages with the same nodes (``ExchangesGrid``): the messages of
a steady SecAgg+ round (masked inputs, unmask) without any cryptography, i.e. the least
any protocol with those exchanges costs in this simulation.

    python benchmarks/secagg_overhead.py                       # 10, 50, 100 clients
    python benchmarks/secagg_overhead.py --clients 10 --size 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedrec.config import SecAggConfig
from fedrec.privacy.secagg.grid import SecAggGrid
from fedrec.privacy.secagg.mod import secagg_mod
from fedrec.protocol.exchange import DelegatingGrid, replies_as_they_arrive
from fedrec.server.recording_grid import RecordingGrid
from fedrec.simulation.engine import FlowerApp
from fedrec.simulation.runner import run_apps

RESULTS = Path(__file__).parent / "results"
FLOOR_EXCHANGES = 1  # a steady SecAgg+ round's exchanges besides the masked inputs: unmask
SETTINGS = SecAggConfig(num_shares=5, reconstruction_threshold=3, clipping_range=4.0, max_weight=1000.0)


def _update(node_id: int, size: int) -> np.ndarray:
    return np.random.default_rng(node_id % (2**32)).uniform(-0.01, 0.01, size).astype(np.float32)


# ---- Message-API client (plain and fedrec SecAgg+) ----------------------------------
message_client = ClientApp(mods=[secagg_mod])


@message_client.train()
def _train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    weights = arrays["w"].numpy()
    trained = ArrayRecord({"w": Array(weights + _update(msg.metadata.dst_node_id, weights.size))})
    return Message(RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 100})}), reply_to=msg)


@message_client.query()
def _echo(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"echo": ConfigRecord({"round": msg.content["ping"]["round"]})}), reply_to=msg)


class ExchangesGrid(DelegatingGrid):
    """Plain aggregation whose train exchange follows ``extra`` exchanges of tiny query
    messages with the same nodes: a steady SecAgg+ round's messages without its
    cryptography, i.e. what any protocol with that many extra exchanges costs here.
    """

    def __init__(self, grid: Grid, extra: int) -> None:
        super().__init__(grid)
        self.extra = extra

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        for exchange in range(self.extra):
            pings = [
                Message(
                    RecordDict({"ping": ConfigRecord({"round": exchange})}),
                    dst_node_id=m.metadata.dst_node_id,
                    message_type=MessageType.QUERY,
                    group_id=m.metadata.group_id,
                )
                for m in messages
            ]
            if len(list(replies_as_they_arrive(self._grid, pings, timeout))) != len(pings):
                raise RuntimeError("a node did not answer an empty exchange")
        return self._grid.send_and_receive(messages, timeout=timeout)


def _wait_for_nodes(grid: Grid, count: int) -> list[int]:
    deadline = time.monotonic() + 300
    while len(nodes := list(grid.get_node_ids())) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return nodes


class TimedFedAvg(FedAvg):
    """FedAvg that keeps each round's wall time, bytes and SecAgg+ stage seconds."""

    def __init__(self, recording: RecordingGrid, secure: SecAggGrid | None, clients: int) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=clients)
        self.recording, self.secure = recording, secure
        self.rounds: list[dict] = []
        self.started = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.started = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        result = super().aggregate_train(server_round, replies)
        self.rounds.append(
            {
                "seconds": time.perf_counter() - self.started,
                "bytes": sum(e.num_bytes for e in self.recording.take()),
                "stages": dict(self.secure.last_stage_seconds) if self.secure else {},
            }
        )
        return result


message_server = ServerApp()


@message_server.main()
def _message_main(grid: Grid, context: Context) -> None:
    """Runs of plain and secure FedAvg, alternating (settings from the run config)."""
    clients, size, rounds, repeats = (int(context.run_config[k]) for k in ("clients", "size", "rounds", "repeats"))
    out = Path(str(context.run_config["out"]))
    _wait_for_nodes(grid, clients)
    initial = ArrayRecord({"w": Array(np.zeros(size, dtype=np.float32))})
    FedAvg(fraction_evaluate=0.0, min_available_nodes=clients).start(  # warm-up: actors start, imports load
        grid=grid, initial_arrays=initial, num_rounds=1, train_config=ConfigRecord()
    )
    runs: dict[str, list[list[dict]]] = {"plain": [], "fedrec-secagg": [], "exchange-floor": []}
    for _ in range(repeats):
        for mode in runs:
            recording = RecordingGrid(grid)
            secure = SecAggGrid(recording, SETTINGS) if mode == "fedrec-secagg" else None
            wrapped = {"fedrec-secagg": secure, "exchange-floor": ExchangesGrid(recording, FLOOR_EXCHANGES)}
            strategy = TimedFedAvg(recording, secure, clients)
            strategy.start(
                grid=wrapped.get(mode, recording),
                initial_arrays=initial,
                num_rounds=rounds,
                train_config=ConfigRecord(),
            )
            runs[mode].append(strategy.rounds)
    out.write_text(json.dumps(runs))


# ---- Flower's legacy SecAgg+ --------------------------------------------------------
class _LegacyClient(NumPyClient):
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        return [parameters[0] + _update(self.node_id, parameters[0].size)], 100, {}


legacy_client = ClientApp(client_fn=lambda context: _LegacyClient(context.node_id).to_client(), mods=[secaggplus_mod])


legacy_server = ServerApp()


@legacy_server.main()
def _legacy_main(grid: Grid, context: Context) -> None:
    """Flower's DefaultWorkflow with SecAggPlusWorkflow, one round per repeat."""
    clients, size, repeats = (int(context.run_config[k]) for k in ("clients", "size", "repeats"))
    out = Path(str(context.run_config["out"]))
    _wait_for_nodes(grid, clients)
    times, num_bytes = [], 0
    for repeat in range(repeats + 1):  # the first round warms up and is not timed
        strategy = LegacyFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(size, dtype=np.float32)]),
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        workflow = DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(
                num_shares=SETTINGS.num_shares,
                reconstruction_threshold=SETTINGS.reconstruction_threshold,
                max_weight=SETTINGS.max_weight,
                clipping_range=SETTINGS.clipping_range,
                quantization_range=SETTINGS.quantization_range,
                modulus_range=SETTINGS.modulus_range,
            )
        )
        recording = RecordingGrid(grid)
        started = time.perf_counter()
        workflow(recording, legacy)
        if repeat:
            times.append(time.perf_counter() - started)
        num_bytes = sum(e.num_bytes for e in recording.take())
    out.write_text(
        json.dumps({"times": {"flower-legacy-secaggplus": times}, "bytes": {"flower-legacy-secaggplus": num_bytes}})
    )


def _simulate(server: str, client: str, clients: int, run_config: dict) -> None:
    """Run this module's apps with ``flwr run`` on a local SuperLink (Flower's log in results/)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    federation = {"num-supernodes": clients, "client-resources-num-cpus": 1, "init-args-num-cpus": 2}
    app = FlowerApp(run_config, f"secagg_overhead:{server}", f"secagg_overhead:{client}")
    run_apps(app, federation, Path(tempfile.mkdtemp(prefix="secagg-overhead-")), echo=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--size", type=int, default=500_000, help="floats per client vector")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per Message-API run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode; legacy rounds timed")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the first round of a run sets up keys, later rounds are steady")
    rows = []
    for clients in args.clients:
        scratch = RESULTS / f".secagg_{clients}.json"
        config = {"clients": clients, "size": args.size, "rounds": args.rounds, "repeats": args.repeats}
        _simulate("message_server", "message_client", clients, {**config, "out": str(scratch)})
        runs = json.loads(scratch.read_text())
        _simulate("legacy_server", "legacy_client", clients, {**config, "out": str(scratch)})
        legacy = json.loads(scratch.read_text())
        scratch.unlink()
        plain = [r for run in runs["plain"] for r in run]
        first = [run[0] for run in runs["fedrec-secagg"]]
        steady = [r for run in runs["fedrec-secagg"] for r in run[1:]]
        seconds = {
            "plain": statistics.median(r["seconds"] for r in plain),
            "fedrec-secagg-first": statistics.median(r["seconds"] for r in first),
            "fedrec-secagg-steady": statistics.median(r["seconds"] for r in steady),
            "flower-legacy-secaggplus": statistics.median(legacy["times"]["flower-legacy-secaggplus"]),
            "exchange-floor": statistics.median(r["seconds"] for run in runs["exchange-floor"] for r in run),
        }
        secure = seconds["fedrec-secagg-steady"]
        sizes = {
            "plain": plain[-1]["bytes"],
            "fedrec-secagg-first": first[-1]["bytes"],
            "fedrec-secagg-steady": steady[-1]["bytes"],
            **legacy["bytes"],
        }
        rows.append(
            {
                "clients": clients,
                "seconds": seconds,
                "bytes": sizes,
                "fedrec_stage_seconds": {
                    "first": first[-1]["stages"],
                    "steady": steady[-1]["stages"] if steady else {},
                },
                "first_over_plain": seconds["fedrec-secagg-first"] / seconds["plain"],
                "secure_over_plain": secure / seconds["plain"],
                "legacy_over_plain": seconds["flower-legacy-secaggplus"] / seconds["plain"],
                "secure_over_legacy": secure / seconds["flower-legacy-secaggplus"],
                "floor_over_plain": seconds["exchange-floor"] / seconds["plain"],
                "bytes_secure_over_plain": (sizes["fedrec-secagg-steady"] or sizes["fedrec-secagg-first"])
                / sizes["plain"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "vector_floats": args.size,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "settings": SETTINGS.values(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "secagg_overhead.json").write_text(json.dumps(report, indent=2))
    print(
        "| clients | plain s | fedrec first round s | fedrec steady round s | Flower legacy s "
        "| steady/plain | first/plain | steady/legacy | bytes steady/plain | exchange floor s | floor/plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["seconds"]
        print(
            f"| {r['clients']} | {s['plain']:.2f} | {s['fedrec-secagg-first']:.2f} | {s['fedrec-secagg-steady']:.2f} "
            f"| {s['flower-legacy-secaggplus']:.2f} | {r['secure_over_plain']:.2f} | {r['first_over_plain']:.2f} "
            f"| {r['secure_over_legacy']:.2f} | {r['bytes_secure_over_plain']:.3f} | {s['exchange-floor']:.2f} "
            f"| {r['floor_over_plain']:.2f} |"
        )


if __name__ == "__main__":
    main()
