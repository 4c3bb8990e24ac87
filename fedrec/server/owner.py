"""A run that outlives the process that started it stops.

The simulation harness starts Flower's processes for a run (SuperLink, SuperExec, the
simulation process that runs the ServerApp, Ray's processes), names itself in
``FEDREC_OWNER_PID`` and marks them all with a token in ``FEDREC_SUPERLINK_TOKEN``
(:func:`run_markers`).
Flower starts its SuperExec in a new session, so a hard kill of the harness (its process
group) does not reach the simulation, whose busy ServerApp thread would go on writing
the results folder that a resumed run is about to use, and Ray's agents outlive their
raylet for minutes. The ServerApp therefore watches its owner: within a second of the
owner's death it kills every process carrying its markers, itself last. A deployed
ServerApp has no owner and is not watched.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.supercore import log

OWNER_PID_ENV = "FEDREC_OWNER_PID"
TOKEN_ENV = "FEDREC_SUPERLINK_TOKEN"
POLL_SECONDS = 0.5
SWEEP_SECONDS = 10.0


def run_markers(token: str | None, owner: int | str) -> tuple[str, ...]:
    """The environment entries that mark a run's processes: its SuperLink's token and its
    owner's PID. Either alone may be lost: Ray's agents overwrite the start of their
    environment block with their process title.
    """
    return (f"{OWNER_PID_ENV}={owner}",) + ((f"{TOKEN_ENV}={token}",) if token else ())


def processes_marked(markers: Iterable[str]) -> list[int]:
    """PIDs of this user's processes whose environment holds any of ``markers`` (Linux ``/proc``)."""
    wanted = {marker.encode() for marker in markers}
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if wanted.intersection((entry / "environ").read_bytes().split(b"\0")):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_marked(markers: Iterable[str], limit: float = SWEEP_SECONDS) -> None:
    """SIGKILL every process marked with any of ``markers`` but this one, sweeping again
    until a sweep finds none (a process forked while a sweep ran is caught by the next)
    or ``limit`` seconds have passed.
    """
    markers = tuple(markers)
    deadline = time.monotonic() + limit
    while (left := [pid for pid in processes_marked(markers) if pid != os.getpid()]) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(POLL_SECONDS / 5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_with_owner() -> None:
    """Once the process named in ``FEDREC_OWNER_PID`` is gone, kill the run's processes."""
    owner, token = os.environ.get(OWNER_PID_ENV), os.environ.get(TOKEN_ENV)
    if not owner:
        return

    def watch() -> None:
        while _alive(int(owner)):
            time.sleep(POLL_SECONDS)
        log(logging.ERROR, "the process that started this run (%s) is gone; stopping the run", owner)
        kill_marked(run_markers(token, owner))
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="fedrec-owner-watch", daemon=True).start()
