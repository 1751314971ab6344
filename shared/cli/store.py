"""`publish`, `versions`, `promote`, `prune`: the Blob model store from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.bundle.loader import ModelBundle
from shared.cli.common import days, open_store, servable, whole_number
from shared.core.errors import AppError
from shared.core.settings import Settings
from shared.inference.factory import open_model
from shared.modelstore.blobstore import PublishResult


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

    bar = ByteProgress("uploading") if sys.stderr.isatty() and not args.dry_run else None
    try:
        result = store.publish(
            servable(Path(args.path), settings),
            version=args.version,
            validate=validate,
            policy=never_promote if args.no_promote else always_promote,
            progress=bar,
            dry_run=args.dry_run,
        )
    finally:
        if bar is not None:
            bar.close()
    if result.dry_run:
        _print_publish_plan(result, store.description)
        return 0
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


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count:,} bytes"


def _print_publish_plan(result: PublishResult, where: str) -> None:
    """publish --dry-run's report: the version, each file it would upload, and what happens to current.json."""
    files = result.files or {}
    total = sum(int(entry["bytes"]) for entry in files.values())
    if result.uploaded:
        print(f"would upload version {result.version} to {where}: {len(files)} files, {_size(total)}")
        for name, entry in sorted(files.items()):
            print(f"  {result.version}/{name}  {_size(int(entry['bytes']))}  sha256 {entry['sha256'][:12]}...")
        print(f"  {result.version}/manifest.json  (written last: the version is complete once it exists)")
    else:
        print(f"would upload nothing: version {result.version} is already in {where} with the same files")
    if result.promoted:
        was = f" (now {result.previous})" if result.previous else " (nothing is current yet)"
        print(f"would point current.json to {result.version}{was}")
    elif result.previous == result.version:
        print(f"current.json already points to {result.version}")
    else:
        still = f"stays at {result.previous}" if result.previous else "stays empty"
        print(f"current.json {still} (--no-promote); nothing was changed")
        return
    print("nothing was changed (--dry-run)")


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from shared.modelstore.blobstore import plan_prune
    from shared.modelstore.pointer import Unchanged
    from shared.search.record import read_reindex_record

    if args.keep is None and args.older_than is None:
        raise AppError("prune needs --keep N (the N newest versions stay), --older-than DAYS, or both")
    store = open_store(settings)
    pointer = store.read_pointer()
    current = pointer.version if pointer is not None and not isinstance(pointer, Unchanged) else None
    protected: dict[str, str] = {}
    record = read_reindex_record(store) if current is not None else None
    if record is not None:
        protected[record.version] = "the version re-enrichment last recorded (reindex.json)"
        if record.pending:
            protected[record.pending] = "being re-enriched now (reindex.json)"
        if record.embedded and record.embedded != record.version:
            # The index's vectors still come from it until re-enrichment has finished: /api/vectorize serves it.
            protected[record.embedded] = "the index's vectors were made with it; /api/vectorize uses it (reindex.json)"
    versions = store.list_versions()
    modified = {v.version: store.version_modified(v.version) for v in versions if not v.complete}
    older_than_s = args.older_than * 86_400 if args.older_than is not None else None
    steps = plan_prune(
        versions,
        current=current,
        protected=protected,
        keep=args.keep,
        older_than_s=older_than_s,
        now=time.time(),
        modified=modified,
    )
    if not steps:
        print(f"no versions in {store.description}")
        return 0
    width = max(len(step.info.version) for step in steps)
    verb = "would delete" if args.dry_run else "delete"
    print(f"versions in {store.description}, oldest first:")
    freed = deleted = 0
    for step in steps:
        info = step.info
        size = _size(info.size_bytes) if info.complete else "-"
        action = verb if step.delete else "keep"
        print(f"  {action:<12} {info.version:<{width}}  {info.created or '-':<20}  {size:>10}  {step.reason}")
        if step.delete and not args.dry_run:
            store.delete_version(info.version)
        if step.delete:
            freed += info.size_bytes
            deleted += 1
    kept = len(steps) - deleted
    if args.dry_run:
        print(f"would delete {deleted} of {len(steps)} versions ({_size(freed)}); nothing was changed (--dry-run)")
    else:
        print(f"deleted {deleted} of {len(steps)} versions ({_size(freed)}); {kept} kept")
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
    publish.add_argument(
        "--dry-run",
        action="store_true",
        help="check the model and say what would be uploaded and whether current.json would move; write nothing",
    )
    publish.set_defaults(handler=cmd_publish)

    prune = commands.add_parser(
        "prune",
        help="delete old versions from the model store (never the current one, nor the one re-enrichment recorded)",
    )
    prune.add_argument(
        "--keep", type=whole_number, metavar="N", help="keep the N newest complete versions (besides those always kept)"
    )
    prune.add_argument(
        "--older-than", type=days, metavar="DAYS", help="delete only versions created more than DAYS days ago"
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    prune.set_defaults(handler=cmd_prune)

    versions = commands.add_parser("versions", help="list the versions in the model store; * marks the current one")
    versions.add_argument("--json", action="store_true", help="one JSON object per version per line")
    versions.set_defaults(handler=cmd_versions)

    promote = commands.add_parser("promote", help="point current.json at an existing version (rollback or pin)")
    promote.add_argument("version", metavar="VERSION")
    promote.set_defaults(handler=cmd_promote)
