"""The fedrec ``ClientApp``.

A deployed Flower 1.41 SuperNode starts a fresh process for every message, and three of
a SecAgg+ round's four messages are answered by the SecAgg+ mod alone: this module
imports only Flower, NumPy and the mods, and the training stack (torch, transformers,
peft, Opacus: :mod:`.train`, :mod:`.evaluate`) loads when a message trains or evaluates.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from ..config import FedRecConfig
from ..privacy.client_level.mod import client_dp_mod
from ..privacy.secagg.mod import secagg_mod
from ..protocol.records import CONFIG, ITEM_COOCCURRENCE, ITEM_STATISTICS, TASK


@functools.lru_cache(maxsize=8)
def _parsed_items(items: frozenset[tuple[str, Any]]) -> FedRecConfig:
    return FedRecConfig.from_mapping(dict(items))


def parsed_config(run_config: Mapping[str, Any]) -> FedRecConfig:
    """The run's settings, parsed and validated once per distinct ``run_config`` (every
    message of a run carries the same one; parsing took a fifth of a tiny client's round).
    """
    return _parsed_items(frozenset(run_config.items()))


def build_client_app(run_config: Mapping[str, Any] | None = None, outer_mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp reading its settings from ``run_config`` when given, else from
    Flower's ``context.run_config`` (as under ``flwr run``). Its SecAgg+ mod answers
    the protocol stages when the server runs secure aggregation, its client-level DP
    mod clips (and noises) the update when asked; both are inert otherwise.
    ``outer_mods`` run before them (e.g. fault injection in tests).
    """
    app = ClientApp(mods=[*outer_mods, secagg_mod, client_dp_mod])

    def config_of(context: Context) -> FedRecConfig:
        return parsed_config(run_config if run_config is not None else context.run_config)

    @app.train()
    def _train(message: Message, context: Context) -> Message:
        cfg = config_of(context)
        task = message.content.config_records[CONFIG].get(TASK)
        if task == ITEM_STATISTICS:
            from .item_statistics import answer_item_statistics

            return answer_item_statistics(message, context, cfg)
        if task == ITEM_COOCCURRENCE:
            from .item_cooccurrence import answer_item_cooccurrence

            return answer_item_cooccurrence(message, context, cfg)
        if cfg.model.recommender == "mf":
            from .collaborative import train_collaborative  # the training stack, only for messages that need it

            return train_collaborative(message, context, cfg)
        from .train import train

        return train(message, context, cfg)

    @app.evaluate()
    def _evaluate(message: Message, context: Context) -> Message:
        from .evaluate import evaluate

        return evaluate(message, context, config_of(context))

    return app


app = build_client_app()
