"""``fedrec recommend``: rank the catalog for one user from a local history, on this
machine, once, or as a resident service that keeps the models loaded (``--serve``) and
answers histories sent to it (``--service``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client.recommend import Recommender

SERVICE_OWNS = ("adapter", "item_tables", "config", "candidates")  # what a service was started with


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``recommend`` subcommand."""
    parser = commands.add_parser(
        "recommend", help="rank the catalog for one user from a local history, on this machine"
    )
    parser.add_argument("--adapter", help="an LLM run's adapter folder (runs/<run>/adapter)")
    parser.add_argument(
        "--item-tables",
        help="a collaborative run's item-tables.npz (mf) or item-weights.npz (ease): it ranks the catalog, and the "
        "adapter (if given) reranks the top",
    )
    parser.add_argument("--history", help="CSV/TSV or JSON-lines file of item,rating[,timestamp]")
    parser.add_argument("-k", type=int, default=10, help="number of recommendations (default: 10)")
    parser.add_argument("--config", help="the run's config file (default: config.toml beside the adapter folder)")
    parser.add_argument(
        "--candidates",
        type=int,
        metavar="N",
        help="the adapter scores the N most-rated unrated items only (default: all), or with --item-tables "
        "reranks the N best retrieved (default: 50)",
    )
    resident = parser.add_mutually_exclusive_group()
    resident.add_argument(
        "--serve",
        metavar="SOCKET",
        help="load the models once and answer histories sent to this Unix socket until stopped (SIGTERM, Ctrl-C)",
    )
    resident.add_argument(
        "--service", metavar="SOCKET", help="ask the service at this socket (started with --serve) for --history"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the recommendations (or serve them); 2 on a bad input."""
    if args.service is not None:
        return _ask(args)
    from ..client.recommend import Recommender, RecommendError, recommend
    from ..client.recommendations import format_recommendations
    from ..client.service import ServiceError

    candidates = args.candidates or 0
    try:
        if args.serve is not None:
            if args.history is not None:
                raise RecommendError("--serve answers the histories sent to it; --history is for one answer")
            return _serve(Recommender(args.adapter, args.item_tables, args.config, candidates), args.serve)
        if args.history is None:
            raise RecommendError("--history is required (or --serve SOCKET to answer many)")
        found = recommend(args.adapter, args.history, args.k, args.config, candidates, args.item_tables)
    except (RecommendError, ServiceError) as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    print(format_recommendations(found))
    return 0


def _serve(recommender: Recommender, socket_path: str) -> int:
    """Load the LLM, then answer until interrupted."""
    from ..client.service import serve

    recommender.load()
    try:
        serve(recommender, socket_path, on_ready=lambda: print(f"fedrec: serving recommendations at {socket_path}"))
    except KeyboardInterrupt:
        print("fedrec: recommendation service stopped", file=sys.stderr)
    return 0


def _ask(args: argparse.Namespace) -> int:
    """Ask a running service; this path imports the standard library only."""
    from ..client.recommendations import format_recommendations
    from ..client.service import ServiceError, ask

    given = [f"--{name.replace('_', '-')}" for name in SERVICE_OWNS if getattr(args, name) is not None]
    try:
        if given:
            raise ServiceError(f"{', '.join(given)}: the service uses what it was started with; ask with --history")
        if args.history is None:
            raise ServiceError("--service needs --history")
        found = ask(args.service, args.history, args.k)
    except ServiceError as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    print(format_recommendations(found))
    return 0
