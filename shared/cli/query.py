"""`query`: test the index. What it holds (hits, totals, facet buckets), the moments a label appears in the
keyframes of videos (`--moments`), the indexer's last run (`--status`), and the documents whose images look like a
local photo (`--like`, shared.cli.like)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from shared.cli.common import probability, whole_number
from shared.core.settings import Settings


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `query`, in one place (a new kind of query adds its option here and its branch in
    main_query)."""
    from shared.search.query import DEFAULT_TOP

    parser.add_argument("--label", metavar="X", help="documents with label X (at or above the threshold)")
    parser.add_argument(
        "--min-confidence",
        type=probability,
        metavar="P",
        help="an image whose top label (X with --label) scores P or more",
    )
    parser.add_argument(
        "--max-confidence",
        type=probability,
        metavar="P",
        help="an image whose top label (X with --label) scores P or less",
    )
    parser.add_argument("--model-version", metavar="V", help="an image classified by model version V")
    parser.add_argument("--video", metavar="NAME", help="keyframes of the video NAME (the keyframes index)")
    parser.add_argument("--facets", action="store_true", help="facet buckets by label and by model version")
    parser.add_argument(
        "--top", type=whole_number, default=DEFAULT_TOP, metavar="N", help=f"show N hits ({DEFAULT_TOP}; 0: none)"
    )
    parser.add_argument("--count", action="store_true", help="the total number of matching documents")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--moments",
        metavar="LABEL",
        help="time ranges per video in which consecutive keyframes carry LABEL (the keyframes index)",
    )
    parser.add_argument(
        "--status", action="store_true", help="the indexer's last run with its per-item errors and warnings"
    )
    parser.add_argument(
        "--like", metavar="PHOTO", help="the documents whose images look most like this local photo (a vector query)"
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="with --like: embed with this bundle or AutoML run folder (default: the model the vectorizer uses)",
    )


def _check(args: argparse.Namespace) -> None:
    from shared.search.query import QueryError

    given = [
        flag
        for flag, value in (
            ("--label", args.label),
            ("--min-confidence", args.min_confidence),
            ("--max-confidence", args.max_confidence),
            ("--model-version", args.model_version),
            ("--video", args.video),
            ("--facets", args.facets or None),
            ("--count", args.count or None),
        )
        if value is not None
    ]
    if args.like is not None:
        extra = [f for f in (*given, "--moments" if args.moments else None, "--status" if args.status else None) if f]
        if extra:
            raise QueryError(f"--like takes --top, --json and --model only: leave out {', '.join(extra)}")
        if not args.top:
            raise QueryError("--like needs --top 1 or more")
    elif args.model is not None:
        raise QueryError("--model only applies with --like")
    if args.status and (given or args.moments):
        raise QueryError("--status reads the indexer only: leave out " + ", ".join(given or ["--moments"]))
    if args.moments is not None:
        extra = [f for f in given if f not in ("--video", "--min-confidence")]
        if extra:
            raise QueryError(f"--moments takes --video and --min-confidence only: leave out {', '.join(extra)}")
    if (
        args.min_confidence is not None
        and args.max_confidence is not None
        and args.min_confidence > args.max_confidence
    ):
        raise QueryError(
            f"--min-confidence {args.min_confidence:g} is above --max-confidence {args.max_confidence:g}: no image "
            "can match"
        )


def _print_status(report: Any, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(report.as_json()) + "\n")
        return
    if report.last_status is None:
        out.write(f"indexer {report.name}: {report.status}, never run\n")
        return
    span = f"{report.start or '?'} - {report.end or 'still running'}"
    counts = f"{report.items_processed or 0} items processed, {report.items_failed or 0} failed"
    out.write(f"indexer {report.name}: {report.status}; last run {report.last_status} ({span}), {counts}\n")
    if report.error_message:
        out.write(f"  run error: {report.error_message}\n")
    for title, issues in (("errors", report.errors), ("warnings", report.warnings)):
        out.write(f"{title} ({len(issues)}):\n" if issues else f"{title}: none\n")
        for issue in issues:
            where = f" [{issue.name}]" if issue.name else ""
            details = f" ({issue.details})" if issue.details else ""
            out.write(f"  {issue.key or '(no key)'}{where}: {issue.message}{details}\n")


def _print_moments(found: list[Any], as_json: bool, label: str, out: TextIO, err: TextIO) -> None:
    from shared.search.query import clock

    if not found and not as_json:
        err.write(f"no keyframe carries the label {label!r}\n")
    for moment in found:
        if as_json:
            out.write(json.dumps(moment.as_json()) + "\n")
            continue
        confidence = f"{moment.max_confidence:.2f}" if moment.max_confidence is not None else "-"
        out.write(f"{moment.video}  {clock(moment.start_ms)}-{clock(moment.end_ms)}  {moment.label}  {confidence}\n")


def _hit_line(hit: Any) -> str:
    shown = []
    tops = set()
    for image in hit.images:
        if image.label is not None:
            tops.add(image.label)
        label = image.label if image.label is not None else "(none above threshold)"
        score = f" {image.confidence:.4f}" if image.confidence is not None else ""
        shown.append(f"{label}{score}")
    line = f"{hit.name}  {'; '.join(shown) or '(not classified)'}"
    others = [label for label in hit.labels if label not in tops]
    if others:
        line += f"  (also {', '.join(others)})"
    return line


def _print_result(result: Any, as_json: bool, out: TextIO) -> None:
    from shared.search.query import LABEL_FACET, MODEL_VERSION_FACET

    titles = {LABEL_FACET: "labels", MODEL_VERSION_FACET: "model versions"}
    if result.total is not None:
        out.write(json.dumps({"total": result.total}) + "\n" if as_json else f"total: {result.total}\n")
    for name, buckets in result.facets.items():
        if as_json:
            for bucket in buckets:
                out.write(json.dumps({"facet": name, "value": bucket.value, "count": bucket.count}) + "\n")
            continue
        out.write(f"{titles.get(name, name)}:" + ("\n" if buckets else " none\n"))
        width = max((len(str(b.value)) for b in buckets), default=0)
        for bucket in buckets:
            out.write(f"  {bucket.value!s:{width}}  {bucket.count}\n")
    for hit in result.hits:
        out.write(json.dumps(hit.as_json()) + "\n" if as_json else _hit_line(hit) + "\n")


def main_query(
    args: argparse.Namespace, settings: Settings, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """The `query` command; QueryError (one `error:` line, status 1) when it cannot be answered."""
    from shared.search.query import LABEL_FACET, MODEL_VERSION_FACET, DocumentFilter, IndexReader

    out = out or sys.stdout
    err = err or sys.stderr
    _check(args)
    if args.like is not None:
        from shared.cli.like import run_like

        return run_like(args, settings, out)
    reader = IndexReader.from_settings(settings)
    if args.status:
        _print_status(reader.indexer_status(), args.json, out)
        return 0
    if args.moments is not None:
        found = reader.moments(args.moments, video=args.video, min_confidence=args.min_confidence)
        _print_moments(found, args.json, args.moments, out, err)
        return 0
    wanted = DocumentFilter(
        label=args.label,
        min_confidence=args.min_confidence,
        max_confidence=args.max_confidence,
        model_version=args.model_version,
        video=args.video,
    )
    result = reader.query(
        wanted,
        top=args.top,
        count=args.count,
        facets=(LABEL_FACET, MODEL_VERSION_FACET) if args.facets else (),
        keyframes=args.video is not None,
    )
    _print_result(result, args.json, out)
    if not result.hits and args.top and not args.json:
        err.write("no documents match\n")
    return 0


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    return main_query(args, settings)


def register(commands: Any) -> None:
    """Add `query` to the parser's `commands` (argparse's subparsers)."""
    parser = commands.add_parser(
        "query",
        help="test the index: hits with their labels, totals, facets, moments in videos, the indexer's last run",
        description="Reads the index SEARCH_INDEX_NAME (and indexer SEARCH_INDEXER_NAME) on SEARCH_ENDPOINT with "
        "SEARCH_ADMIN_KEY, or with DefaultAzureCredential when it is not set.",
    )
    add_query_arguments(parser)
    parser.set_defaults(handler=cmd_query)
