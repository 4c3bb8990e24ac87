"""Grid and strategy plumbing: a ``Grid`` and a ``Strategy`` that forward every call to
another one (wrappers override what they change), and pushing messages while handling
replies as they arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run

POLL_SECONDS = (0.005, 0.1)  # shortest and longest wait between pulls for replies


class DelegatingGrid(Grid):
    """Forwards the whole ``Grid`` interface to ``grid``."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:  # noqa: D102
        self._grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self._grid.run

    def create_message(  # noqa: D102
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:  # noqa: D102
        return self._grid.send_and_receive(messages, timeout=timeout)


class DelegatingStrategy(Strategy):
    """Forwards the whole ``Strategy`` interface to ``strategy``."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def configure_train(  # noqa: D102
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(  # noqa: D102
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(  # noqa: D102
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:  # noqa: D102
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:  # noqa: D102
        self.strategy.summary()


def replies_as_they_arrive(grid: Grid, messages: list[Message], timeout: float | None) -> Iterator[Message]:
    """Push ``messages`` and yield their replies as they arrive, until every one has
    answered or ``timeout`` seconds have passed (never, when None). Polls every 5 ms while
    replies come, backing off to 0.1 s when none do: Flower's deployed grid sleeps 3 s
    between pulls, its simulated grid 0.1 s.
    """
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    wait = POLL_SECONDS[0]
    while pending:
        replies = list(grid.pull_messages(list(pending)))
        for reply in replies:
            pending.discard(reply.metadata.reply_to_message_id)
            yield reply
        left = None if deadline is None else deadline - time.monotonic()
        if not pending or (left is not None and left <= 0):
            return
        wait = POLL_SECONDS[0] if replies else min(2 * wait, POLL_SECONDS[1])
        time.sleep(wait if left is None else min(wait, left))
