"""`python -m shared COMMAND`: the command line over the same code the functions run.

Each module of this package adds one group of subcommands (`register`) and holds their handlers; a handler
takes the parsed arguments and the app's Settings and returns the exit status. An AppError is one `error:`
line on stderr and status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from shared.cli import classify, keyframes, query, refresh, search, serve, store, tolabel
from shared.core import settings as settings_module
from shared.core.errors import AppError
from shared.core.settings import Settings, load_local_settings

COMMAND_GROUPS = (classify, serve, store, refresh, search, query, keyframes, tolabel)


def version_text(prog: str) -> str:
    """`<prog> <product version> (ONNX Runtime <version>, Python <version>)`, read without importing ONNX Runtime."""
    import platform
    from importlib import metadata

    from shared import __version__

    try:
        onnxruntime = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        onnxruntime = "not installed"
    return f"{prog} {__version__} (ONNX Runtime {onnxruntime}, Python {platform.python_version()})"


class _Version(argparse.Action):
    """--version: print version_text and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and ONNX Runtime's, and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text(parser.prog))
        parser.exit()


def build_parser(prog: str = "python -m shared") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="AutoML image classifier skill tools")
    parser.add_argument("--version", action=_Version)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the Azure SDK's own log (credential attempts, retries)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def quiet_azure_sdk(verbose: bool) -> None:
    """The Azure SDK's own log (azure-identity lists every credential it tried, some 40 lines, before our one
    `error:` line says what to do) is shown only with --verbose."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("azure").setLevel(logging.DEBUG)
        # urllib3 logs each request line at DEBUG, query included: a SAS token. azure-core's own log (above)
        # redacts query parameters and secret headers.
        logging.getLogger("urllib3").setLevel(logging.INFO)
    else:
        logging.getLogger("azure").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None, prog: str = "python -m shared") -> int:
    args = build_parser(prog).parse_args(argv)
    quiet_azure_sdk(args.verbose)
    try:
        # Like `func start`, every command reads the Values of the app's local.settings.json into its
        # environment (a setting already there wins), so commands run in one folder agree on their settings.
        args.local_settings = load_local_settings(settings_module.LOCAL_SETTINGS, os.environ)
        settings = Settings.from_env()
        return int(args.handler(args, settings))
    except AppError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
