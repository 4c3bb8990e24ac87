"""Seconds of one client-round of fedrec's ClientApp, in process: the train handler (its
mods, parsing the run's config, loading the global adapter, DP-SGD on the node's examples,
the reply) without Flower's transport, on the tiny model and the per-user synthetic data
of ``cross_device_scale.py``. ``--profile`` prints where a round's time goes.

    python benchmarks/client_round.py                 # median of 10 blocks of 20 rounds
    python benchmarks/client_round.py --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from cross_device_scale import write_dataset  # beside this script
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrec.client.app import build_client_app
from fedrec.config import resolve_config
from fedrec.models.adapter import adapter_to_arrays
from fedrec.tasks.preference.scoring import scorer_for


def client_rounds(users: int) -> tuple[list[Context], Callable[[Context], None]]:
    """One context per user and a call that answers one train message for a context."""
    paths = write_dataset(Path(tempfile.mkdtemp(prefix="client-round-")), users)
    overrides = {"dataset": paths[0], "items-path": paths[1], "max-users": 0, "eval-users": 10}
    overrides |= {"partitioner": "user", "num-clients": users, "central-eval": False, "ranking-users": 0}
    cfg = resolve_config("smoke", overrides=overrides)
    scorer = scorer_for(cfg)
    scorer.reset_adapter(cfg.federation.seed)
    config = ConfigRecord({"server-round": 1, "backbone-fingerprint": scorer.fingerprint})
    content = RecordDict({"arrays": adapter_to_arrays(scorer), "config": config})
    app = build_client_app()
    run_config = cfg.to_run_config()
    contexts = [
        Context(
            run_id=1,
            node_id=user + 1,
            node_config={"partition-id": user, "num-partitions": users},
            state=RecordDict(),
            run_config=run_config,
        )
        for user in range(users)
    ]

    def answer(context: Context) -> None:
        app(Message(content=content, dst_node_id=context.node_id, message_type=MessageType.TRAIN), context)

    return contexts, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as Flower's runtime does
    contexts, answer = client_rounds(args.users)
    for context in contexts[:20]:  # warm-up: the backbone, the data, the first prefix states
        answer(context)
    position, blocks = 20, []
    profile = cProfile.Profile() if args.profile else None
    for _ in range(args.blocks):
        started = time.perf_counter()
        if profile:
            profile.enable()
        for _ in range(20):
            answer(contexts[position % len(contexts)])
            position += 1
        if profile:
            profile.disable()
        blocks.append(1000 * (time.perf_counter() - started) / 20)
    print(f"per client-round: median {statistics.median(blocks):.1f} ms over {args.blocks} blocks of 20")
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
