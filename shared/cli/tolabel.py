"""`to-label`: copy the images the model is least sure of into the labeling project's Blob folder
(docs/labeling-loop.md)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from shared.cli.common import positive_int, probability
from shared.core.settings import Settings


def current_version(settings: Settings) -> str:
    """The model store's current version, for --model-version's default."""
    from shared.modelstore.blobstore import BlobModelStore
    from shared.modelstore.pointer import Unchanged
    from shared.search.tolabel import ToLabelError

    store = BlobModelStore.from_settings(settings)
    if store is None:
        raise ToLabelError(
            "no model version to ask for: pass --model-version V, or set MODEL_BLOB_CONNECTION_STRING or "
            "MODEL_BLOB_ACCOUNT_URL so that the model store's current version is used"
        )
    with store.errors("reading the current version"):
        pointer = store.read_pointer()
    if pointer is None or isinstance(pointer, Unchanged):
        raise ToLabelError(f"the model store {store.description} has no current version: pass --model-version V")
    return pointer.version


def main_to_label(
    args: argparse.Namespace,
    settings: Settings,
    out: TextIO | None = None,
    err: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """The `to-label` command: 0 when every chosen image was sent (or already there, or skipped as not an image),
    1 when any copy failed."""
    from shared.core.storage import check_account_url, connection_string_from, credential, open_service
    from shared.search.query import IndexReader
    from shared.search.tolabel import Sources, Target, least_confident, send

    out = out or sys.stdout
    err = err or sys.stderr
    env = os.environ if env is None else env
    client_id = env.get("AZURE_CLIENT_ID", "").strip() or None
    if args.target_connection_string_env:
        target_service = open_service(
            connection_string=connection_string_from(
                env, args.target_connection_string_env, "--target-connection-string-env", "--target-account-url"
            )
        )
    else:
        target_service = open_service(
            account_url=check_account_url(args.target_account_url, "--target-account-url"), client_id=client_id
        )
    if args.source_connection_string_env:
        sources = Sources(
            open_service(
                connection_string=connection_string_from(
                    env,
                    args.source_connection_string_env,
                    "--source-connection-string-env",
                    "DefaultAzureCredential (leave the flag out)",
                )
            ),
            None,
        )
    else:
        sources = Sources(None, credential(client_id))
    version = args.model_version or current_version(settings)
    reader = IndexReader.from_settings(settings)
    chosen, matched = least_confident(reader, version, args.below, args.top, args.label)
    label = f" labelled {args.label}" if args.label else ""
    out.write(
        f"{matched} documents have an image{label} below {args.below:g} for model version {version}; "
        f"{'checking' if args.dry_run else 'sending'} the {len(chosen)} least confident\n"
    )
    target = Target(target_service.get_container_client(args.target_container), args.target_folder)
    target.check()

    def report(outcome: Any) -> None:
        if outcome.status == "failed":
            err.write(f"error: {outcome.message}\n")
        else:
            out.write(outcome.message + "\n")

    outcomes = send(chosen, sources, target, dry_run=args.dry_run, report=report)
    counts = {status: sum(o.status == status for o in outcomes)
              for status in ("sent", "would-send", "already-there", "not-an-image", "failed")}  # fmt: skip
    where = f"{args.target_container}/{target.folder}" if target.folder else args.target_container
    if args.dry_run:
        out.write(
            f"dry run: would send {counts['would-send']} to {where}; {counts['already-there']} already there, "
            f"{counts['not-an-image']} not images, {counts['failed']} failed; nothing written\n"
        )
    else:
        out.write(
            f"sent {counts['sent']} to {where}; {counts['already-there']} already there, "
            f"{counts['not-an-image']} not images, {counts['failed']} failed\n"
        )
    return 1 if counts["failed"] else 0


def cmd_to_label(args: argparse.Namespace, settings: Settings) -> int:
    return main_to_label(args, settings)


def register(commands: Any) -> None:
    """Add `to-label` to the parser's `commands` (argparse's subparsers)."""
    from shared.search.tolabel import DEFAULT_BELOW, DEFAULT_TOP

    parser = commands.add_parser(
        "to-label",
        help="copy the images the model is least sure of into the labeling project's folder",
        description="Asks the index (SEARCH_ENDPOINT, SEARCH_INDEX_NAME; SEARCH_ADMIN_KEY or DefaultAzureCredential) "
        "for the documents with an image of one model version below a confidence, and copies the least confident "
        "into the Blob folder an Azure ML Data Labeling project reads (with incremental refresh on). Never "
        "overwrites or deletes anything there; a second run copies nothing twice.",
    )
    parser.add_argument(
        "--below", type=probability, default=DEFAULT_BELOW, metavar="P",
        help=f"images whose top label scores below P, a number from 0 to 1 ({DEFAULT_BELOW})",
    )  # fmt: skip
    parser.add_argument(
        "--model-version", metavar="V", help="the model version whose answers count (the model store's current one)"
    )
    parser.add_argument(
        "--top", type=positive_int, default=DEFAULT_TOP, metavar="N",
        help=f"at most N images, least confident first ({DEFAULT_TOP})",
    )  # fmt: skip
    parser.add_argument("--label", metavar="X", help="only images whose top label is X")
    parser.add_argument("--target-container", required=True, metavar="NAME", help="the labeling project's container")
    parser.add_argument(
        "--target-folder", required=True, metavar="PATH",
        help="the folder of the labeling project's dataset in that container ('' for the container itself)",
    )  # fmt: skip
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--target-connection-string-env", metavar="NAME",
        help="a variable holding the target account's connection string (UseDevelopmentStorage=true for Azurite)",
    )  # fmt: skip
    target.add_argument(
        "--target-account-url", metavar="URL",
        help="https://<account>.blob.core.windows.net, with DefaultAzureCredential",
    )  # fmt: skip
    parser.add_argument(
        "--source-connection-string-env", metavar="NAME",
        help="a variable holding the connection string of the account the index's images are in (default: "
        "DefaultAzureCredential on each image's URL)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="list what would be sent; write nothing")
    parser.set_defaults(handler=cmd_to_label)
