"""The ClientApp's evaluation: the global adapter on the node's held-out interactions."""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict

from ..config import FedRecConfig
from ..protocol.records import METRICS
from ..tasks.preference.evaluation import evaluate_examples
from ..tasks.preference.signals import node_signals
from .model import global_model
from .node import node_data, prefix_store


def evaluate(message: Message, context: Context, cfg: FedRecConfig) -> Message:
    """Reply the local AUC (NaN with one class only), the loss, and the score histograms
    per label from which the server pools the AUC.
    """
    scorer = global_model(cfg, message)  # at the global rank
    data, partition_id = node_data(cfg, context)
    examples = data.held_out_examples(partition_id, cfg.evaluation.eval_split)
    signals = node_signals(cfg, data, partition_id)
    metrics = evaluate_examples(
        scorer,
        data,
        examples,
        cfg.training.physical_batch_size,
        prefix_store(context),
        None if signals is None else signals.of(examples),
    )
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)
