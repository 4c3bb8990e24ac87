"""A resident recommender on the device. ``fedrec recommend --serve SOCKET`` opens a run's
models once (:class:`~fedrec.client.recommend.Recommender`) and answers histories over a
Unix socket, so that an answer costs the scoring alone, not the interpreter, the LLM
stack's imports and the backbone's load (most of a cold ``fedrec recommend``).

One JSON object per line each way, one request per connection::

    {"history": "/absolute/path/ratings.csv", "k": 10}
    {"history": [{"item": "50", "rating": 5, "timestamp": 1}, ...], "k": 10}
    -> {"recommendations": [{"item": "172", "title": "...", "score": 1.25}, ...]}
    -> {"error": "what is wrong with the request"}   (the service goes on)

A history path must be absolute (the service does not share the asker's working folder).
The socket is a file of this machine, readable and writable by its owner only: histories
stay private. This module imports the standard library only at load, so asking is fast;
serving imports what the recommender needs.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .recommendations import Recommendation

if TYPE_CHECKING:
    from .recommend import Recommender

MAX_REQUEST_BYTES = 8 * 2**20  # a history of about 200,000 ratings
ASK_TIMEOUT = 300.0  # seconds an answer may take before the asker gives up
REQUEST_KEYS = ("history", "k")


class ServiceError(ValueError):
    """No service answers at the socket, or it refused the request (the reason given)."""


class RequestError(ValueError):
    """A request the service cannot read; the reply names the problem."""


class RecommendServer(socketserver.UnixStreamServer):
    """The socket server, one request at a time (the scorer is not shared between threads)."""

    def __init__(self, socket_path: Path, recommender: Recommender) -> None:
        self.recommender = recommender
        previous = os.umask(0o177)  # the socket file is created rw------- (the owner's only)
        try:
            super().__init__(str(socket_path), _RequestHandler)
        finally:
            os.umask(previous)


class _RequestHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        assert isinstance(self.server, RecommendServer)
        self.wfile.write(json.dumps(answer(self.server.recommender, line), allow_nan=False).encode() + b"\n")


def answer(recommender: Recommender, line: bytes) -> dict[str, Any]:
    """The reply to one request line: the recommendations, or the problem."""
    from .inputs import RecommendError

    try:
        history, k = read_request(line)
        found = recommender.recommend(history, k)
    except (RequestError, RecommendError) as err:
        return {"error": str(err)}
    except Exception as err:  # a fault of the service, not the request: said, logged, and the service goes on
        traceback.print_exc(file=sys.stderr)
        return {"error": f"the service failed on this request: {type(err).__name__}: {err}"}
    return {"recommendations": [{"item": r.item, "title": r.title, "score": r.score} for r in found]}


def read_request(line: bytes) -> tuple[Any, int]:
    """The history (an absolute path, or a frame of rows) and ``k`` of a request line."""
    if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
        raise RequestError(f"a request is one JSON line of at most {MAX_REQUEST_BYTES} bytes, ended by a newline")
    try:
        request = json.loads(line)
    except ValueError as err:
        raise RequestError(f"the request is not JSON: {err}") from None
    if not isinstance(request, dict) or "history" not in request or set(request) - set(REQUEST_KEYS):
        keys = sorted(request) if isinstance(request, dict) else type(request).__name__
        raise RequestError(f"a request is an object with 'history' and optionally 'k'; got {keys}")
    k = request.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int):
        raise RequestError(f"'k' must be an integer, got {k!r}")
    history = request["history"]
    if isinstance(history, str):
        if not Path(history).is_absolute():
            raise RequestError(f"the history path must be absolute (the service runs elsewhere), got '{history}'")
        return history, k
    if isinstance(history, list) and history and all(isinstance(row, dict) for row in history):
        import pandas as pd

        return pd.DataFrame.from_records(history), k
    raise RequestError("'history' is an absolute file path or a non-empty list of {item, rating[, timestamp]} rows")


def serve(recommender: Recommender, socket_path: str | Path, on_ready: Callable[[], None] | None = None) -> None:
    """Answer requests at ``socket_path`` until interrupted (SIGTERM or Ctrl-C in the
    ``fedrec`` command); the socket file is removed on the way out. A live service
    already at the path is refused; a stale socket file (its service gone) is replaced.
    """
    path = Path(socket_path).expanduser()
    claim_socket_path(path)
    server = RecommendServer(path, recommender)
    try:
        if on_ready is not None:
            on_ready()
        server.serve_forever()
    finally:
        server.server_close()
        path.unlink(missing_ok=True)


def claim_socket_path(path: Path) -> None:
    """Make ``path`` free for a new socket, or raise :class:`ServiceError` saying why not."""
    if not path.parent.is_dir():
        raise ServiceError(f"cannot serve at {path}: folder {path.parent} does not exist")
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ServiceError(f"cannot serve at {path}: it is a file, not a socket; choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # a socket left by a service that is gone
            return
    raise ServiceError(f"a service already answers at {path}; stop it first or choose another path")


def ask(
    socket_path: str | Path, history: str | Path | list[dict[str, Any]], k: int = 10, timeout: float = ASK_TIMEOUT
) -> list[Recommendation]:
    """The service's ``k`` recommendations for ``history`` (a file, sent as its absolute
    path, or rows); raises :class:`ServiceError` when no service answers or it refuses.
    """
    rows = history if isinstance(history, list) else str(Path(history).expanduser().absolute())
    request = json.dumps({"history": rows, "k": k}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ServiceError(
                f"no recommendation service answers at {socket_path}; start one with "
                f"fedrec recommend --serve {socket_path} --item-tables ... [--adapter ...]"
            ) from None
        try:
            connection.sendall(request)
            reply = connection.makefile("rb").readline()
        except TimeoutError:
            raise ServiceError(f"the service at {socket_path} did not answer within {timeout:g} s") from None
        except OSError as err:
            raise ServiceError(f"the service at {socket_path} broke the connection: {err}") from None
    try:
        answered = json.loads(reply)
    except ValueError:
        answered = None
    if not isinstance(answered, dict) or not ({"error", "recommendations"} & set(answered)):
        raise ServiceError(f"the service at {socket_path} ended the connection without an answer")
    if "error" in answered:
        raise ServiceError(answered["error"])
    return [Recommendation(r["item"], r["title"], r["score"]) for r in answered["recommendations"]]
