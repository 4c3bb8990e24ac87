"""The fedrec ``ServerApp``: FedAvg over LoRA adapters, measured and recorded.

The server starts from a seeded LoRA initialisation, runs a Message-API strategy
through a :class:`RecordingGrid` (bytes of every message), evaluates centrally after
each round when asked, and writes the results folder (design §7).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import statistics
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..config import FedRecConfig
from ..data.federation import load_federated_data, load_split
from ..data.ranking import ranking_cases
from ..metrics import auc_from_histograms
from ..models.adapter import adapter_to_arrays, frozen_a_fingerprint, load_adapter_arrays, save_adapter
from ..privacy.client_dp import NORM_KEY as UPDATE_NORM_KEY
from ..privacy.client_dp import WEIGHT_KEY as CLIENT_DP_WEIGHT_KEY
from ..privacy.secagg import STAGE_COLLECT, STAGE_SETUP, STAGE_SHARE_KEYS
from ..settings import data_settings, scorer_for
from ..simulation.baselines import preference_baselines
from ..simulation.ranking import random_expectation, ranking_baselines
from ..strategies import build_strategy
from .checkpoint import (
    ServerCheckpoint,
    python_random_state,
    read_checkpoint,
    restore_strategy_state,
    set_python_random_state,
    strategy_state,
    write_checkpoint,
)
from .client_dp_grid import ClientDPGrid
from .evaluation import CentralEvaluator
from .recording_grid import Exchange, RecordingGrid
from .results import ResultsWriter
from .secagg_grid import SecAggGrid, require_linear_strategy

RANKING_KEYS = ("hr@10", "ndcg@10", "ranking_users")
PACKAGES = ("fedrec", "flwr", "torch", "transformers", "peft", "opacus")


def summarize_round(
    server_round: int,
    exchanges: list[Exchange],
    seconds: float,
    excluded: Mapping[int, str] | None = None,
    dropped: Collection[int] = (),
) -> dict[str, Any]:
    """One line of ``rounds.jsonl`` from the messages of a round (design §7);
    ``excluded``: nodes whose update the strategy left out, and why; ``dropped``: nodes
    that secure aggregation dropped after they replied (counted as failed).
    """
    excluded = excluded or {}
    train = [e for e in exchanges if e.message_type == MessageType.TRAIN]
    # Under secure aggregation a sampled client is first asked for keys (setup), for its
    # shares (share-keys), or, when it shared them with the previous round's unmask,
    # for its masked input; it reports its training in the clear beside that input.
    first_stages = (None, STAGE_SETUP, STAGE_SHARE_KEYS, STAGE_COLLECT)
    sampled = {e.node_id for e in train if e.direction == "down" and e.stage in first_stages}
    replies = [
        e for e in train if e.direction == "up" and e.stage in (None, STAGE_COLLECT) and e.node_id not in dropped
    ]
    answered = [e for e in replies if e.error is None and not e.metrics.get("declined", 0)]
    trained = [e for e in answered if e.node_id not in excluded]
    declined = [e for e in replies if e.error is None and e.metrics.get("declined", 0)]
    examples = sum(int(e.metrics["num-examples"]) for e in trained)
    epsilons = [float(e.metrics["epsilon"]) for e in trained if "epsilon" in e.metrics]
    evaluated = [
        e for e in exchanges if e.direction == "up" and e.message_type == MessageType.EVALUATE and e.error is None
    ]
    record: dict[str, Any] = {
        "round": server_round,
        "clients_sampled": len(sampled),
        "clients_ok": len(trained),
        "clients_declined": len(declined),
        "clients_excluded": len(answered) - len(trained),
        "clients_failed": len(sampled) - len(answered) - len(declined),
        "train_loss": (
            sum(float(e.metrics["train_loss"]) * int(e.metrics["num-examples"]) for e in trained) / examples
            if examples
            else None
        ),
        "train_examples": examples,
        "epsilon_max": max(epsilons) if epsilons else None,
        "epsilon_median": statistics.median(epsilons) if epsilons else None,
        "delta": max((float(e.metrics["delta"]) for e in trained if "delta" in e.metrics), default=None),
        "bytes_down": sum(e.num_bytes for e in exchanges if e.direction == "down"),
        "bytes_up": sum(e.num_bytes for e in exchanges if e.direction == "up"),
        "seconds": seconds,
    }
    if excluded:
        record["excluded"] = {str(node): reason for node, reason in sorted(excluded.items())}
    answered_nodes = {e.node_id for e in train if e.direction == "up"}
    silent = sorted(sampled - answered_nodes)
    if silent:
        record["no_reply"] = silent  # within the round timeout
    stages = sorted({e.stage for e in exchanges if e.stage is not None})
    if stages:
        record["bytes_by_stage"] = {
            stage: {
                direction: sum(e.num_bytes for e in exchanges if e.stage == stage and e.direction == direction)
                for direction in ("down", "up")
            }
            for stage in stages
        }
        record["secagg_clipped"] = sum(int(e.metrics.get("secagg-clipped", 0)) for e in trained)
    norms = [float(e.metrics[UPDATE_NORM_KEY]) for e in trained if UPDATE_NORM_KEY in e.metrics]
    if norms:
        record["update_norm_max"] = max(norms)
    if evaluated:
        pos = [sum(h) for h in zip(*(e.metrics["pos-hist"] for e in evaluated), strict=True)]
        neg = [sum(h) for h in zip(*(e.metrics["neg-hist"] for e in evaluated), strict=True)]
        record["auc_federated"] = auc_from_histograms(pos, neg)
    return record


class RoundRecorder:
    """``evaluate_fn`` of ``Strategy.start``: called with the global adapter before
    round 1 and after every round, it evaluates centrally (if configured), turns the
    round's recorded messages into a ``rounds.jsonl`` line and prints progress.
    """

    def __init__(
        self,
        writer: ResultsWriter,
        grid: RecordingGrid,
        evaluator: Callable[[ArrayRecord, bool], dict[str, float]] | None,
        cfg: FedRecConfig,
        secure: SecAggGrid | None = None,
        client_dp: ClientDPGrid | None = None,
        excluded: Mapping[int, Mapping[int, str]] | None = None,
        start_round: int = 0,
        checkpoint: Callable[[int, ArrayRecord], None] | None = None,
    ) -> None:
        self.writer, self.grid, self.evaluator, self.num_rounds = writer, grid, evaluator, cfg.num_server_rounds
        self.delta = cfg.target_delta
        self.secure, self.client_dp = secure, client_dp
        self.excluded = excluded if excluded is not None else {}  # round -> node -> reason (the strategy's)
        self.start_round, self.checkpoint = start_round, checkpoint
        self._failures_seen = 0
        self.latest_arrays: ArrayRecord | None = None
        self.node_epsilon: dict[int, float] = {}
        self._last = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Record round ``start_round + server_round`` (0: the initial adapter), then
        checkpoint. Flower counts a resumed run's rounds from 1: the round it resumes
        after was recorded before the interruption.
        """
        self.latest_arrays = arrays
        if server_round == 0 and self.start_round:
            return None
        server_round += self.start_round
        exchanges = self.grid.take()
        for e in exchanges:
            if e.direction == "up" and e.error is None and "epsilon" in e.metrics:
                self.node_epsilon[e.node_id] = float(e.metrics["epsilon"])
        # ranking (100 candidates per user) is costly: the initial and the final adapter
        rank = server_round in (0, self.num_rounds)
        metrics = self.evaluator(arrays, rank) if self.evaluator is not None else {}
        now = time.perf_counter()
        dropped = self.secure.last_dropped if self.secure is not None and server_round > 0 else {}
        record = summarize_round(server_round, exchanges, now - self._last, self.excluded.get(server_round), dropped)
        self._last = now
        if self.secure is not None and server_round > 0:
            failures = self.secure.failures[self._failures_seen :]
            self._failures_seen = len(self.secure.failures)
            record["secagg_failure"] = failures[-1][1] if failures else None
            if self.secure.last_dropped:
                record["secagg_dropped"] = {str(n): why for n, why in sorted(self.secure.last_dropped.items())}
            if record.get("secagg_clipped"):
                log(
                    logging.WARNING,
                    "round %d: %d update values exceeded clipping-range and were clipped before secure aggregation",
                    server_round,
                    record["secagg_clipped"],
                )
        if record.get("no_reply"):
            log(logging.WARNING, "round %d: no reply in time from nodes %s", server_round, record["no_reply"])
        if self.client_dp is not None and server_round > 0:
            record["client_level_epsilon"] = self.client_dp.epsilon(self.delta)
            record["client_noise_multiplier"] = self.client_dp.last_noise_multiplier
        record["auc"] = metrics.get("auc")
        record["eval_loss"] = metrics.get("loss")
        record |= {k: metrics[k] for k in RANKING_KEYS if k in metrics}
        self.writer.append_round(record)
        if self.checkpoint is not None:
            self.checkpoint(server_round, arrays)
        print(progress_line(record, self.num_rounds), flush=True)
        return MetricRecord({k: v for k, v in metrics.items() if v is not None}) if metrics else None


class ServerState:
    """The state a checkpoint carries besides the adapter: the strategy's optimizer,
    the random generators (Flower's node sampling, SecAgg+'s ring order, client-level
    DP noise), the secure-aggregation round counter and the client-level accountant.
    """

    def __init__(self, strategy: Strategy, secure: SecAggGrid | None, client_dp: ClientDPGrid | None) -> None:
        self.strategy, self.secure, self.client_dp = strategy, secure, client_dp

    def checkpoint(self, server_round: int, arrays: ArrayRecord, node_epsilon: Mapping[int, float]) -> ServerCheckpoint:
        """Everything needed to continue after ``server_round``."""
        generators: dict[str, Any] = {"python": python_random_state()}
        state: dict[str, Any] = {"node_epsilon": {str(n): e for n, e in node_epsilon.items()}}
        if self.secure is not None:
            generators["secagg"] = python_random_state(self.secure.rng)
            state["secagg_round"] = self.secure.round
        if self.client_dp is not None:
            generators["client_dp"] = self.client_dp.rng.bit_generator.state
            state["client_dp_history"] = [list(h) for h in self.client_dp.accountant.history]
        return ServerCheckpoint(server_round, arrays, strategy_state(self.strategy), generators, state)

    def restore(self, checkpoint: ServerCheckpoint) -> None:
        """Continue from ``checkpoint`` (of a run with the same settings)."""
        restore_strategy_state(self.strategy, checkpoint.strategy_state)
        set_python_random_state(checkpoint.generators["python"])
        if self.secure is not None:
            set_python_random_state(checkpoint.generators["secagg"], self.secure.rng)
            self.secure.round = int(checkpoint.state["secagg_round"])
        if self.client_dp is not None:
            self.client_dp.rng.bit_generator.state = checkpoint.generators["client_dp"]
            self.client_dp.accountant.history = [
                (float(s), float(q), int(n)) for s, q, n in checkpoint.state["client_dp_history"]
            ]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def progress_line(record: Mapping[str, Any], num_rounds: int) -> str:
    """A one-line report of a finished round."""
    return (
        f"[fedrec] round {record['round']}/{num_rounds}  auc {_fmt(record.get('auc'), '.4f')}  "
        f"loss {_fmt(record.get('train_loss'), '.4f')}  eps max {_fmt(record.get('epsilon_max'), '.2f')}  "
        f"clients ok/declined/excluded/failed {record['clients_ok']}/{record['clients_declined']}/"
        f"{record['clients_excluded']}/{record['clients_failed']}  "
        f"bytes up {record['bytes_up']:,} down {record['bytes_down']:,}  {record['seconds']:.1f}s"
    )


def default_out_dir() -> Path:
    """``runs/<UTC timestamp>`` under the working directory."""
    return Path("runs") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def run_server(grid: Grid, cfg: FedRecConfig) -> dict[str, Any]:
    """Run the federation described by ``cfg`` on ``grid``; returns the summary."""
    started = time.perf_counter()
    random.seed(cfg.seed)  # Flower's node sampling uses the random module
    if cfg.resume and not cfg.out:
        raise ValueError("resume needs the run's folder: set out")
    resumed = read_checkpoint(cfg.out) if cfg.resume else None
    writer = ResultsWriter(
        cfg.out or default_out_dir(), cfg.to_run_config(), resumed.round if resumed is not None else None
    )
    print(f"[fedrec] results folder: {writer.folder}", flush=True)
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.seed)
    initial = adapter_to_arrays(scorer)
    central = load_split(data_settings(cfg))
    cases = (
        ranking_cases(central.data, central.split, central.eval_users, cfg.ranking_negatives, cfg.seed)[
            : cfg.ranking_users
        ]
        if cfg.ranking_users
        else []
    )
    evaluator = CentralEvaluator(scorer, central, cfg.physical_batch_size, cases) if cfg.central_eval else None
    baselines = preference_baselines(central.split, central.test_examples(), cfg.like_threshold)
    recording = RecordingGrid(grid)
    strategy = build_strategy(cfg)
    secure = client_dp = None
    if cfg.secure_aggregation:
        require_linear_strategy(strategy)
        settings = cfg.secagg_settings
        if cfg.client_dp:  # a client-level DP mean is unweighted: each survivor counts once
            settings = dataclasses.replace(settings, max_weight=1.0, weight_key=CLIENT_DP_WEIGHT_KEY)
        secure = SecAggGrid(recording, settings, seed=cfg.seed)
    if cfg.client_dp:
        client_dp = ClientDPGrid(secure or recording, cfg.client_dp_settings, secure is not None, seed=cfg.seed)
    server_state = ServerState(strategy, secure, client_dp)
    if resumed is not None:
        server_state.restore(resumed)
        print(f"[fedrec] resuming after round {resumed.round} of {cfg.num_server_rounds}", flush=True)
    start_round = resumed.round if resumed is not None else 0

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        write_checkpoint(writer.folder, server_state.checkpoint(server_round, arrays, recorder.node_epsilon))

    recorder = RoundRecorder(
        writer, recording, evaluator, cfg, secure, client_dp, strategy.excluded, start_round, checkpoint
    )
    if resumed is not None:
        recorder.node_epsilon = {int(n): float(e) for n, e in resumed.state["node_epsilon"].items()}
    strategy.round_offset = start_round
    shared: dict[str, str | int] = {"backbone": cfg.backbone, "backbone-fingerprint": scorer.fingerprint}
    if cfg.freeze_lora_a:  # A does not travel: every node must draw the same one
        rows = min(cfg.client_lora_ranks, default=cfg.global_lora_rank)
        shared |= {"lora-a-fingerprint": frozen_a_fingerprint(scorer, rows), "lora-a-rows": rows}
    strategy.start(
        grid=client_dp or secure or recording,
        initial_arrays=resumed.arrays if resumed is not None else initial,
        num_rounds=cfg.num_server_rounds - start_round,
        timeout=cfg.round_timeout,
        train_config=ConfigRecord(dict(shared)),
        evaluate_config=ConfigRecord(dict(shared)),
        evaluate_fn=recorder,
    )
    final = recorder.latest_arrays if recorder.latest_arrays is not None else initial
    load_adapter_arrays(scorer, final, "final adapter")
    save_adapter(scorer, writer.folder / "adapter")
    summary = build_summary(
        cfg, writer.rounds, recorder.node_epsilon, baselines, scorer, initial, time.perf_counter() - started
    )
    if cases:
        partitions = load_federated_data(data_settings(cfg), cfg.num_clients).partitions
        rated = central.data.interactions.groupby("user")["item"].agg(set).to_dict()
        catalog = sorted(central.data.items["item"])
        summary["ranking_baselines"] = ranking_baselines(
            central.split.train_interactions, cases, catalog, rated, partitions, cfg.like_threshold, cfg.seed
        )
        summary["ranking_baselines"]["random"] = random_expectation(cfg.ranking_negatives + 1)
        summary["ranking_candidates"] = cfg.ranking_negatives + 1
    if client_dp is not None:
        summary["client_dp"] = {
            "epsilon": client_dp.epsilon(cfg.target_delta),
            "delta": cfg.target_delta,
            "clip": cfg.client_dp_clip,
            "noise_multiplier": cfg.client_dp_noise_multiplier,
            "noise": cfg.client_dp_noise,
            "releases": len(client_dp.accountant.history),
        }
    writer.write_summary(summary)
    writer.write_plots()
    return summary


def build_summary(
    cfg: FedRecConfig,
    rounds: list[dict[str, Any]],
    node_epsilon: Mapping[int, float],
    baselines: Mapping[str, float],
    scorer: Any,
    adapter: ArrayRecord,
    seconds: float,
) -> dict[str, Any]:
    """``summary.json`` (design §7)."""
    first, last = rounds[0], rounds[-1]
    epsilons = list(node_epsilon.values())
    full_model = sum(p.numel() * p.element_size() for n, p in scorer.named_parameters() if "lora_" not in n)
    up, down = sum(r["bytes_up"] for r in rounds), sum(r["bytes_down"] for r in rounds)
    return {
        "rounds": len(rounds) - 1,
        "metrics": {
            "auc": last.get("auc"),
            "loss": last.get("eval_loss"),
            "auc_federated": last.get("auc_federated"),
            **{k: last[k] for k in RANKING_KEYS if k in last},
        },
        "initial_metrics": {
            "auc": first.get("auc"),
            "loss": first.get("eval_loss"),
            **{k: first[k] for k in RANKING_KEYS if k in first},
        },
        "eval_examples": len(load_split(data_settings(cfg)).test_examples()) if cfg.central_eval else 0,
        "baselines": dict(baselines),
        "dp": cfg.dp,
        "epsilon": {
            "max": max(epsilons) if epsilons else None,
            "median": statistics.median(epsilons) if epsilons else None,
            "target": cfg.target_epsilon if cfg.dp else None,
        },
        "delta": cfg.target_delta if cfg.dp else None,
        "bytes": {
            "up": up,
            "down": down,
            "total": up + down,
            "adapter": adapter.count_bytes(),
            "full_model": full_model,
            "adapter_to_full_model": adapter.count_bytes() / full_model,
        },
        "backbone": {"name": cfg.backbone, "fingerprint": scorer.fingerprint},
        "seconds": seconds,
        "versions": {name: version(name) for name in PACKAGES},
        "torch_threads": torch.get_num_threads(),
    }


def build_server_app(run_config: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp reading its settings from ``run_config`` when given, else from
    Flower's ``context.run_config`` (as under ``flwr run``).
    """
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, FedRecConfig.from_mapping(run_config if run_config is not None else context.run_config))

    return app


app = build_server_app()
