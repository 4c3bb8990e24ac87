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
from ..models.adapter import adapter_to_arrays, frozen_a_fingerprint, load_adapter_arrays, save_adapter
from ..models.scorer import Scorer
from ..protocol.records import BACKBONE, BACKBONE_FINGERPRINT, LORA_A_FINGERPRINT, LORA_A_ROWS
from ..tasks.preference.dataset import load_split
from ..tasks.preference.evaluation import CentralEvaluator
from ..tasks.preference.scoring import scorer_for
from ..tasks.ranking.cases import ranking_cases
from .checkpoint import ServerCheckpoint, read_checkpoint, write_checkpoint
from .federation import Federation, compose
from .owner import stop_with_owner
from .results import ResultsWriter, default_out_dir
from .rounds import Checkpoint, RoundRecorder
from .summary import build_summary, client_dp_summary


def run_server(grid: Grid, cfg: FedRecConfig) -> dict[str, Any]:
    """Run the federation described by ``cfg`` on ``grid``; returns the summary."""
    started = time.perf_counter()
    random.seed(cfg.federation.seed)  # Flower's node sampling uses the random module
    resumed = _checkpoint_to_resume(cfg)
    start_round = resumed.round if resumed is not None else 0
    writer = ResultsWriter(cfg.server.out or default_out_dir(), cfg.to_run_config(), resumed and start_round)
    print(f"[fedrec] results folder: {writer.folder}", flush=True)
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    initial = adapter_to_arrays(scorer)
    federation = compose(cfg, grid)
    evaluator = _central_evaluator(cfg, scorer) if cfg.evaluation.central_eval else None
    recorder = RoundRecorder(writer, federation, evaluator, cfg, start_round, _checkpointer(writer, federation))
    if resumed is not None:
        _continue(resumed, federation, recorder)
    start_arrays = resumed.arrays if resumed is not None else initial
    request = ConfigRecord(_shared_config(cfg, scorer))
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
    summary = build_summary(cfg, writer.rounds, recorder.node_epsilon, scorer, initial, eval_examples, seconds)
    _finish(writer, federation, scorer, final, summary, cfg)
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


def _central_evaluator(cfg: FedRecConfig, scorer: Scorer) -> CentralEvaluator:
    """The held-out interactions (and ranking cases) of the evaluation users."""
    central = load_split(cfg.data, cfg.federation.seed, cfg.evaluation.eval_users)
    evaluation = cfg.evaluation
    cases = []
    if evaluation.ranking_users:
        all_cases = ranking_cases(
            central.data,
            central.split,
            central.eval_users,
            evaluation.ranking_negatives,
            cfg.federation.seed,
            evaluation.eval_split,
        )
        cases = all_cases[: evaluation.ranking_users]
    return CentralEvaluator(scorer, central, cfg.training.physical_batch_size, cases, evaluation.eval_split)


def _shared_config(cfg: FedRecConfig, scorer: Scorer) -> dict[str, str | int]:
    """What every request carries: the backbone's identity and, when A does not travel,
    the frozen A's fingerprint (every node must draw the same one).
    """
    shared: dict[str, str | int] = {BACKBONE: cfg.model.backbone, BACKBONE_FINGERPRINT: scorer.fingerprint}
    if cfg.freeze_lora_a:
        rows = min(cfg.model.client_lora_ranks, default=cfg.model.global_lora_rank)
        shared |= {LORA_A_FINGERPRINT: frozen_a_fingerprint(scorer, rows), LORA_A_ROWS: rows}
    return shared


def _finish(
    writer: ResultsWriter, federation: Federation, scorer: Scorer, final: ArrayRecord, summary: dict, cfg: FedRecConfig
) -> None:
    """Save the final adapter, then write the summary and the plots."""
    load_adapter_arrays(scorer, final, "final adapter")
    save_adapter(scorer, writer.folder / "adapter")
    if federation.client_dp is not None:
        summary["client_dp"] = client_dp_summary(cfg, federation.client_dp)
    writer.write_summary(summary)
    writer.write_plots()


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
