"""The fedrec ``ServerApp``: a LoRA-aware strategy over the adapter, with secure
aggregation and client-level DP when configured, measured, recorded and checkpointed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from ..config import FedRecConfig
from ..models.item_tables import ITEM_BIASES
from ..protocol.replies import readable_reason
from .checkpoint import ServerCheckpoint, read_checkpoint, write_checkpoint
from .federation import Federation, compose
from .item_statistics import item_statistics
from .models import ItemItemModel, ServedModel, served_model
from .owner import stop_with_owner
from .results import ResultsWriter, default_out_dir, mark_failed
from .rounds import Checkpoint, RoundRecorder
from .summary import build_summary, client_dp_summary


def run_server(grid: Grid, cfg: FedRecConfig) -> dict[str, Any]:
    """Run the federation described by ``cfg`` on ``grid``; returns the summary. A run
    that raises is marked failed in its results folder, with the reason.
    """
    started = time.perf_counter()
    random.seed(cfg.federation.seed)  # Flower's node sampling uses the random module
    resumed = _checkpoint_to_resume(cfg)
    writer = ResultsWriter(cfg.server.out or default_out_dir(), cfg.to_run_config(), resumed and resumed.round)
    print(f"[fedrec] results folder: {writer.folder}", flush=True)
    if writer.set_aside is not None:
        print(f"[fedrec] the failed run that was there is now in {writer.set_aside}", flush=True)
    try:
        return _serve(grid, cfg, writer, resumed, started)
    except Exception as err:
        mark_failed(writer.folder, readable_reason(f"{type(err).__name__}: {err}"))
        raise


def _serve(
    grid: Grid, cfg: FedRecConfig, writer: ResultsWriter, resumed: ServerCheckpoint | None, started: float
) -> dict[str, Any]:
    """Train, evaluate and record every round from the start or ``resumed``; write the
    final model and the summary.
    """
    start_round = resumed.round if resumed is not None else 0
    if cfg.record_dp.dp and not cfg.record_dp.secure_noise:
        print("[fedrec] DP-SGD noise follows the run's seed (secure-noise = false): for simulations only", flush=True)
    model = served_model(cfg)
    federation = compose(cfg, grid)
    if isinstance(model, ItemItemModel):
        return _fit_item_item(model, federation, writer, cfg, started)
    counts, statistics = None, None
    if cfg.item_statistics.item_statistics:
        counts, statistics = item_statistics(cfg, federation, len(model.initial[ITEM_BIASES].numpy()), writer)
    evaluator = model.evaluator(counts) if cfg.evaluation.central_eval else None
    recorder = RoundRecorder(writer, federation, evaluator, cfg, start_round, _checkpointer(writer, federation))
    if resumed is not None:
        _continue(resumed, federation, recorder)
    start_arrays = resumed.arrays if resumed is not None else model.initial
    request = ConfigRecord(model.request_config())
    result = federation.strategy.start(
        grid=federation.grid,
        initial_arrays=start_arrays,
        num_rounds=cfg.federation.num_server_rounds - start_round,
        timeout=cfg.federation.round_timeout,
        train_config=request,
        evaluate_config=ConfigRecord(dict(request)),
        evaluate_fn=recorder,
    )
    final = result.arrays if len(result.arrays) else start_arrays  # no round aggregated: the start
    eval_examples = len(evaluator.examples) if evaluator is not None else 0
    seconds = time.perf_counter() - started
    summary = build_summary(cfg, writer.rounds, recorder.node_epsilon, model, eval_examples, seconds)
    if statistics is not None:
        summary["item_statistics"] = statistics
    _finish(writer, federation, model, final, summary, cfg)
    return summary


def _fit_item_item(
    model: ItemItemModel, federation: Federation, writer: ResultsWriter, cfg: FedRecConfig, started: float
) -> dict[str, Any]:
    """Fit the item-item model in its one exchange, evaluate it as round 0, write the summary."""
    evaluator = model.evaluator() if cfg.evaluation.central_eval else None
    recorder = RoundRecorder(writer, federation, evaluator, cfg)  # its round 0 times the exchange and the fit
    recorder(0, model.fit(federation))
    final = model.initial
    eval_examples = len(evaluator.examples) if evaluator is not None else 0
    seconds = time.perf_counter() - started
    summary = build_summary(cfg, writer.rounds, recorder.node_epsilon, model, eval_examples, seconds)
    _finish(writer, federation, model, final, summary, cfg)
    return summary


def _checkpointer(writer: ResultsWriter, federation: Federation) -> Checkpoint:
    """Writes the checkpoint after a round: the adapter, the layers' state, the clients' epsilons."""

    def checkpoint(server_round: int, arrays: ArrayRecord, node_epsilon: Mapping[int, float]) -> None:
        state = {"federation": federation.state_dict(), "node_epsilon": {str(n): e for n, e in node_epsilon.items()}}
        write_checkpoint(writer.folder, ServerCheckpoint(server_round, arrays, federation.optimizer_state(), state))

    return checkpoint


def _continue(resumed: ServerCheckpoint, federation: Federation, recorder: RoundRecorder) -> None:
    """Put a checkpoint's state back: the layers, the round count, the clients' epsilons."""
    federation.load_optimizer_state(resumed.strategy_state)
    federation.load_state_dict(resumed.state["federation"])
    federation.aggregation.round_offset = resumed.round
    recorder.node_epsilon = {int(n): float(e) for n, e in resumed.state["node_epsilon"].items()}
    print(f"[fedrec] resuming after round {resumed.round} of {recorder.num_rounds}", flush=True)


def _checkpoint_to_resume(cfg: FedRecConfig) -> ServerCheckpoint | None:
    if not cfg.server.resume:
        return None
    if not cfg.server.out:
        raise ValueError("resume needs the run's folder: set out")
    return read_checkpoint(cfg.server.out)


def _finish(
    writer: ResultsWriter,
    federation: Federation,
    model: ServedModel,
    final: ArrayRecord,
    summary: dict,
    cfg: FedRecConfig,
) -> None:
    """Save the final model and the plots, then the summary: the last file of a run."""
    model.save(final, writer.folder)
    if federation.client_dp is not None:
        summary["client_dp"] = client_dp_summary(cfg, federation.client_dp)
    writer.write_plots()
    writer.write_summary(summary)


def build_server_app(run_config: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp reading its settings from ``run_config`` when given, else from
    Flower's ``context.run_config`` (as under ``flwr run``).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        stop_with_owner()  # a simulation harness that dies takes its run with it
        run_server(grid, FedRecConfig.from_mapping(run_config if run_config is not None else context.run_config))

    return app


app = build_server_app()
