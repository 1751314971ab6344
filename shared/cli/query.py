"""`query`: read the search index from the command line. `--like PHOTO` finds the documents whose images look like a
local photo (shared.cli.like, docs/vectors.md)."""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli.like import LikeError, add_like_arguments, run_like
from shared.core.settings import Settings


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    if not getattr(args, "like", None):
        raise LikeError("say what to look for: --like PHOTO")
    return run_like(args, settings)


def register(commands: Any) -> None:
    """Add this module's subcommands to the parser's `commands` (argparse's subparsers)."""
    query = commands.add_parser("query", help="query the search index: --like PHOTO for the most similar images")
    add_like_arguments(query)
    query.set_defaults(handler=cmd_query)
