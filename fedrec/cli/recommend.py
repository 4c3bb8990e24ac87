"""``fedrec recommend``: rank the catalog for one user from a local history, on this machine."""

from __future__ import annotations

import argparse
import sys


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
    parser.add_argument("--history", required=True, help="CSV/TSV or JSON-lines file of item,rating[,timestamp]")
    parser.add_argument("-k", type=int, default=10, help="number of recommendations (default: 10)")
    parser.add_argument("--config", help="the run's config file (default: config.toml beside the adapter folder)")
    parser.add_argument(
        "--candidates",
        type=int,
        default=0,
        metavar="N",
        help="the adapter scores the N most-rated unrated items only (default: all), or with --item-tables "
        "reranks the N best retrieved (default: 50)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the recommendations; 2 on a bad input."""
    from ..client.recommend import RecommendError, format_recommendations, recommend

    try:
        found = recommend(args.adapter, args.history, args.k, args.config, args.candidates, args.item_tables)
    except RecommendError as err:
        print(f"fedrec: {err}", file=sys.stderr)
        return 2
    print(format_recommendations(found))
    return 0
