"""`publish`, `versions`, `promote`: the Blob model store from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.bundle.loader import ModelBundle
from shared.cli.common import open_store, servable
from shared.core.settings import Settings
from shared.inference.factory import open_model


class ByteProgress:
    """A tqdm bar of bytes on stderr, created when the first block moves (the total is known then)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: Any = None

    def __call__(self, count: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=total, desc=self.description, unit="B", unit_scale=True, file=sys.stderr, leave=False)
        self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from shared.modelstore.blobstore import always_promote, never_promote

    store = open_store(settings)
    threads = settings.engine_threads or None

    def validate(bundle: ModelBundle) -> None:
        open_model(bundle, threads=threads)  # loads, smoke-tests and checks the labels, or raises BundleError

    bar = ByteProgress("uploading") if sys.stderr.isatty() else None
    try:
        result = store.publish(
            servable(Path(args.path), settings),
            version=args.version,
            validate=validate,
            policy=never_promote if args.no_promote else always_promote,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    what = "uploaded" if result.uploaded else "already in the store"
    if result.promoted:
        was = f" (was {result.previous})" if result.previous else ""
        print(f"published {result.version} ({what}); current.json now points to it{was}")
    elif result.previous == result.version:
        print(f"published {result.version} ({what}); it was already current")
    else:
        still = f"still points to {result.previous}" if result.previous else "points to nothing yet"
        print(
            f"published {result.version} ({what}), not promoted: current.json {still}; when it is checked, run "
            f"`python -m shared promote {result.version}`"
        )
    return 0


def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    from shared.modelstore.pointer import Unchanged

    store = open_store(settings)
    pointer = store.read_pointer()
    current = pointer.version if pointer is not None and not isinstance(pointer, Unchanged) else None
    versions = store.list_versions()
    if args.json:
        for info in versions:
            print(
                json.dumps(
                    {
                        "version": info.version,
                        "current": info.version == current,
                        "complete": info.complete,
                        "created": info.created,
                        "metric": info.metric,
                        "source": info.source,
                        "bytes": info.size_bytes,
                    }
                )
            )
        return 0
    if not versions:
        print(f"no versions yet in {store.description}: `python -m shared publish PATH` uploads the first")
        return 0
    width = max(40, *(len(i.version) for i in versions))
    print(f"versions in {store.description} (* = current):")
    print(f"  {'version':<{width}} {'created':<21} {'metric':<24} {'size':>10}")
    for info in versions:
        mark = "*" if info.version == current else " "
        if not info.complete:
            print(f"{mark} {info.version:<{width}} incomplete (no manifest.json: an upload that never finished)")
            continue
        metric = info.metric or {}
        metric_text = f"{metric.get('name')}={metric.get('value')}" if metric else "-"
        size = f"{info.size_bytes / 1e6:.1f} MB"
        print(f"{mark} {info.version:<{width}} {info.created or '-':<21} {metric_text:<24} {size:>10}")
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    result = open_store(settings).promote(args.version)
    if result.promoted:
        print(f"current.json now points to {result.version}" + (f" (was {result.previous})" if result.previous else ""))
    else:
        print(f"{result.version} is already current")
    return 0


def register(commands: Any) -> None:
    """Add this module's subcommands to the parser's `commands` (argparse's subparsers)."""
    publish = commands.add_parser("publish", help="upload a bundle or AutoML run folder to the Blob model store")
    publish.add_argument("path", metavar="PATH", help="bundle folder or downloaded AutoML run folder")
    publish.add_argument(
        "--version",
        metavar="V",
        help="version name (default: the run id, else the name the store already has for the same content, else "
        "m- and a content hash, the name classify shows)",
    )
    publish.add_argument(
        "--no-promote", action="store_true", help="upload and verify only; `promote VERSION` makes it current"
    )
    publish.set_defaults(handler=cmd_publish)

    versions = commands.add_parser("versions", help="list the versions in the model store; * marks the current one")
    versions.add_argument("--json", action="store_true", help="one JSON object per version per line")
    versions.set_defaults(handler=cmd_versions)

    promote = commands.add_parser("promote", help="point current.json at an existing version (rollback or pin)")
    promote.add_argument("version", metavar="VERSION")
    promote.set_defaults(handler=cmd_promote)
