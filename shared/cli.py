"""`python -m shared COMMAND`: the command line over the same code the functions run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shared.bundle import SAMPLE_BUNDLE, ModelBundle, load_bundle
from shared.engine import Engine
from shared.errors import ClassifierError, ImageError
from shared.settings import Settings
from shared.skill import ClassifyOptions, ImageLoader, classify_batch, engine_threads

if TYPE_CHECKING:
    from shared.store import BlobModelStore

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
BATCH = 16
PROGRESS_MIN_FILES = 32
DEFAULT_TOP_K = 5
MAX_NAME_WIDTH = 60


def _image_files(paths: Sequence[str]) -> Iterator[tuple[str, Path | None]]:
    """Each argument as given: a file, or a folder's images (recursive, sorted); None marks a missing path."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for found in _folder_images(path):
                yield str(found), found
        elif path.exists():
            yield arg, path
        else:
            yield arg, None


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _nothing_to_classify(paths: Sequence[str]) -> str | None:
    """The error when no argument names an image at all (each missing path, each folder without images),
    or None when there is something to classify."""
    problems = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            if _folder_images(path):
                return None
            problems.append(f"no image files in {arg} (looked recursively for {', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.exists():
            return None
        else:
            problems.append(f"no such file or folder: {arg}")
    return "; ".join(problems)


def file_loader(path: Path | None) -> ImageLoader:
    """Read the file when the batch gets to it; a missing or unreadable file is that image's error."""

    def load() -> bytes:
        if path is None:
            raise ImageError("no such file or folder")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read file ({exc.strerror or exc.__class__.__name__})") from None

    return load


def converting(model_pt: Path) -> None:
    """Say on a terminal that a conversion has started: it prints nothing else for a minute or more."""
    if sys.stderr.isatty():
        sys.stderr.write(f"converting {model_pt} to ONNX (rebuild, export, parity check: a minute or more)...\n")
        sys.stderr.flush()


def servable(path: Path, settings: Settings) -> Path:
    """The folder itself, or, for a run that only has a usable model.pt, its converted ONNX bundle."""
    from shared.checkpoint import servable_folder

    return servable_folder(path, settings.model_cache_dir(), on_convert=converting)


def open_engine(model: str | None, settings: Settings) -> Engine:
    """The engine for `--model` (converting a model.pt-only run once), else AZUREML_MODEL_DIR, else the
    bundled sample. Raises BundleError."""
    path = servable(Path(model), settings) if model else settings.model_dir or SAMPLE_BUNDLE
    return Engine(load_bundle(path), threads=engine_threads(settings))


def shorten(name: str, width: int) -> str:
    """`name` cut to `width` characters from the left (the file name end is what tells paths apart)."""
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def table_rows(data: dict[str, Any], top_k: int | None) -> list[tuple[str, float]]:
    """(label, score) rows of one image for the table: every label at or above the threshold (one for
    multi-class, all of them for multi-label) plus, when --top-k was given, the top K predictions;
    "(none above threshold)" with the best score when there is nothing else to show."""
    predictions = [(str(p["label"]), float(p["score"])) for p in data["predictions"]]
    above = set(data["labels"])
    rows = [p for p in predictions if p[0] in above]
    if top_k is not None:
        rows += [p for p in predictions[:top_k] if p[0] not in above]
    rows.sort(key=lambda p: -p[1])
    return rows or [("(none above threshold)", float(data["confidence"]))]


class Output:
    """Rows on stdout, messages on stderr, and a progress bar on stderr when it is a terminal; a row or a
    message clears the bar first and redraws it after, so the two never share a line."""

    def __init__(self, out: TextIO, err: TextIO, total: int, show_progress: bool) -> None:
        self.out, self.err = out, err
        self.bar: Any = None
        if show_progress:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=total, file=err, unit="image", desc="classified", leave=False, dynamic_ncols=True)

    def row(self, text: str) -> None:
        self._write(text, self.out)

    def message(self, text: str) -> None:
        self._write(text, self.err)

    def _write(self, text: str, stream: TextIO) -> None:
        if self.bar is None:
            stream.write(text + "\n")
            return
        from tqdm import tqdm

        tqdm.write(text, file=stream)
        stream.flush()

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    # Paths are checked before the model is loaded or anything is printed.
    problem = _nothing_to_classify(args.paths)
    if problem is not None:
        raise ClassifierError(problem)
    files = list(_image_files(args.paths))
    engine = open_engine(args.model, settings)
    if args.boxes and engine.task != "object-detection":
        raise ClassifierError(
            f"--boxes needs an object detection model; {engine.bundle.root} is a {engine.task} classifier"
        )
    top_k = args.top_k or DEFAULT_TOP_K
    if not args.json:
        # The table shows every label above a multi-label threshold, whatever --top-k says.
        top_k = max(args.top_k or 1, len(engine.labels) if engine.task == "multilabel" else 1)
    options = ClassifyOptions(
        top_k=top_k,
        object_top_k=args.top_k,
        threshold=args.threshold,
        fast_decode=args.fast,
        limits=settings.image_limits(),
    )
    out, err = sys.stdout, sys.stderr
    width = min(max(len(name) for name, _ in files), MAX_NAME_WIDTH)
    if not args.json:
        out.write(
            f"model {engine.version} ({engine.task}, {len(engine.labels)} labels) from {engine.bundle.root}\n"
            + (f"{'file':<{width}}  objects\n" if engine.task == "object-detection" else "")
            + (f"{'file':<{width}}  {'label':<32}  confidence\n" if engine.task != "object-detection" else "")
        )
        out.flush()
    failed = 0
    show_progress = len(files) >= PROGRESS_MIN_FILES and err.isatty()
    output = Output(out, err, len(files), show_progress)
    workers = settings.decode_threads or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 and len(files) > 1 else None
    started = time.perf_counter()
    try:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            outcomes = classify_batch(
                engine, [file_loader(path) for _, path in chunk], options, pool=pool, workers=workers
            )
            for (name, path), outcome in zip(chunk, outcomes, strict=True):
                if outcome.errors:
                    failed += 1
                    output.message(f"error: {name}: {'; '.join(outcome.errors)}")
                    if args.json:
                        output.row(json.dumps({"file": name, "errors": list(outcome.errors)}))
                elif args.json:
                    line: dict[str, object] = {"file": name, **(outcome.data or {})}
                    if outcome.warnings:
                        line["warnings"] = list(outcome.warnings)
                    output.row(json.dumps(line))
                elif outcome.data is not None and "objects" in outcome.data:
                    from shared.detector import object_summary

                    output.row(f"{shorten(name, width):<{width}}  {object_summary(outcome.data)}")
                else:
                    assert outcome.data is not None
                    shown = shorten(name, width)
                    for label, score in table_rows(outcome.data, args.top_k):
                        output.row(f"{shown:<{width}}  {label:<32}  {score:.4f}")
                        shown = ""
                if args.boxes and outcome.data is not None and path is not None:
                    from shared.detector import draw_boxes

                    drawn = Path(args.boxes) / (name.replace("/", "_") + ".boxes.png")
                    draw_boxes(path, outcome.data["objects"], drawn)
            output.advance(len(chunk))
    finally:
        output.close()
        if pool is not None:
            pool.shutdown()
    if len(files) >= PROGRESS_MIN_FILES or failed:
        elapsed = time.perf_counter() - started
        err.write(f"{len(files) - failed} classified, {failed} failed in {elapsed:.1f} s\n")
    return 1 if failed else 0


def _bind_error(exc: BaseException, host: str, port: int) -> str:
    """One line naming what went wrong binding host:port and what to do instead."""
    import errno
    import socket

    if isinstance(exc, OverflowError) or not 0 <= port <= 65535:
        return f"port {port} is out of range; choose one from 1 to 65535 with --port N, or --port 0 for a free one"
    if isinstance(exc, socket.gaierror):
        return f"host {host!r} does not resolve to an address of this machine; use --host 127.0.0.1 (or 0.0.0.0)"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        also = " (func start's port too)" if port == 7071 else ""
        return f"port {port} on {host} is already in use{also}; choose another with --port N (0 for a free one)"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to listen on {host}:{port}; use a port above 1023 with --port N, or --port 0"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; use --host 127.0.0.1 (or 0.0.0.0)"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
    return f"cannot listen on {host}:{port} ({reason}); try --port 0 for a free port or another --host"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import logging

    from shared.app import SkillService, reset_service
    from shared.devserver import LOCAL_SETTINGS, load_local_settings, make_server
    from shared.errors import ModelNotReady

    # Like `func start`: local.settings.json's Values fill in what the environment does not set.
    applied = load_local_settings(LOCAL_SETTINGS, os.environ)
    if applied:
        settings = Settings.from_env()
    if args.model:
        served = servable(Path(args.model), settings)
        settings = dataclasses.replace(settings, model_dir=served, blob_connection_string=None, blob_account_url=None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = make_server(settings, args.host, args.port)
    except (OSError, OverflowError) as exc:
        sys.stderr.write(f"error: {_bind_error(exc, args.host, args.port)}\n")
        return 1
    reset_service(SkillService(settings))
    host, port = server.server_address[:2]
    from shared.app import service

    try:
        service().holder.current()
    except ModelNotReady as exc:
        sys.stderr.write(f"warning: {exc}; answering 503 until it loads\n")
    status = service().holder.status()
    source = f"settings from {LOCAL_SETTINGS.name} ({len(applied)} values); " if applied else ""
    sys.stderr.write(
        f"{source}serving {status['source']} on http://{host!s}:{port}/api/classify (POST) and /api/health (GET)"
        f"{'; function key required' if settings.api_key else ''}\n"
    )
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def open_store(settings: Settings) -> BlobModelStore:
    from shared.store import BlobModelStore, StoreError

    store = BlobModelStore.from_settings(settings)
    if store is None:
        raise StoreError(
            "no model store is configured: set MODEL_BLOB_CONNECTION_STRING (Azurite, development) or "
            "MODEL_BLOB_ACCOUNT_URL (Azure, with a managed identity or `az login`)"
        )
    return store


class ByteProgress:
    """A tqdm bar of bytes on stderr, created when the first block moves (the total is known then)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: Any = None

    def __call__(self, count: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.description, unit="B", unit_scale=True, file=sys.stderr, leave=False)
        self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from shared.store import always_promote, never_promote

    store = open_store(settings)
    threads = settings.engine_threads or None

    def validate(bundle: ModelBundle) -> None:
        Engine(bundle, threads=threads)  # loads, smoke-tests and checks the labels, or raises BundleError

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
    from shared.store import _Unchanged

    store = open_store(settings)
    pointer = store.read_pointer()
    current = pointer.version if pointer is not None and not isinstance(pointer, _Unchanged) else None
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


def cmd_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from shared.refresh import refresh_from_run_dir, refresh_model

    if args.run_dir:
        outcome = refresh_from_run_dir(settings, Path(args.run_dir), dry_run=args.dry_run)
    else:
        outcome = refresh_model(settings, dry_run=args.dry_run)
    metric = f"{outcome.metric['name']} {outcome.metric['value']:.4f}" if outcome.metric else "no metric"
    print(f"candidate {outcome.candidate} ({metric}); current {outcome.current or 'none'}")
    print(f"decision: {outcome.decision}")
    return 0


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    from shared.checkpoint import convert_checkpoint, find_checkpoint

    source = find_checkpoint(Path(args.model_pt))
    converting(source)
    out = convert_checkpoint(source, Path(args.out_dir))
    bundle = load_bundle(out)
    Engine(bundle, threads=settings.engine_threads or None)
    parity = (bundle.manifest or {}).get("source", {}).get("parity_max_rel_diff")
    print(
        f"converted {source} to {out}: {bundle.task}, {len(bundle.labels)} labels, "
        f"{bundle.preprocessing.resize}/{bundle.preprocessing.crop} px, opset {bundle.opset}, "
        f"ONNX vs PyTorch {parity:.1e} of the logits' scale; version {bundle.version}"
    )
    return 0


def cmd_search_setup(args: argparse.Namespace, settings: Settings) -> int:
    from shared.searchsetup import main_search_setup

    return main_search_setup(args)


def cmd_migrate_skillset(args: argparse.Namespace, settings: Settings) -> int:
    from shared.migrate import main_migrate_skillset

    return main_migrate_skillset(args)


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    """One re-enrichment pass (exit 0 whatever it decided), or `--status`; errors are one `error:` line."""
    from shared.reindex import ReindexError, SearchService, read_status, run_pass

    if not settings.search_endpoint:
        raise ReindexError("re-enrichment is off: set SEARCH_ENDPOINT to the search service's URL")
    store = open_store(settings)
    service = SearchService.from_settings(settings)
    if args.status:
        status = read_status(settings, store, service)
        record = status.recorded
        print(f"current version: {status.current or 'none (nothing is published)'}")
        if record is None:
            print("last re-enriched with: none yet (the next pass takes the current version as its baseline)")
        else:
            claim = f"; re-enriching with {record.pending} since {record.claimed}" if record.pending else ""
            print(f"last re-enriched with: {record.version} ({record.mode}, {record.recorded}){claim}")
        print(f"indexer {settings.search_indexer_name}: {status.indexer.describe()}")
        if status.stale is not None:
            print(f"documents with an image classified by another version than {status.current}: {status.stale}")
        return 0
    if settings.reindex_mode == "off":
        raise ReindexError("re-enrichment is off (REINDEX_MODE=off): set REINDEX_MODE to full or skills")
    outcome = run_pass(settings, store, service, now=args.now, dry_run=args.dry_run)
    print(outcome.message)
    return 0


def _positive_int(raw: str) -> int:
    # ArgumentTypeError, never ValueError: argparse would name this function in its message.
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {raw!r}")
    return value


def _probability(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description="AutoML image classifier skill tools")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the Azure SDK's own log (credential attempts, retries)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    classify = commands.add_parser("classify", help="classify image files or folders")
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image file or folder (searched recursively)")
    classify.add_argument("--model", metavar="PATH", help="bundle folder or AutoML run folder (default: sample)")
    classify.add_argument(
        "--top-k",
        type=_positive_int,
        metavar="K",
        help=f"predictions per image (--json: default {DEFAULT_TOP_K}; table: the top K rows besides the labels "
        "above the threshold; detection: the most objects, default the model's)",
    )
    classify.add_argument(
        "--threshold", type=_probability, metavar="T", help="score cutoff (default 0.5 multi-label, 0 multi-class)"
    )
    classify.add_argument(
        "--json", action="store_true", help='one JSON object per image per line (failed files: {"file", "errors"})'
    )
    classify.add_argument(
        "--boxes", metavar="OUT_DIR", help="detection models: write each image with its boxes drawn to OUT_DIR"
    )
    classify.add_argument(
        "--fast",
        action="store_true",
        help="decode large JPEGs at reduced scale like the skill does (FAST_JPEG_DECODE); default: AutoML's exact path",
    )
    classify.set_defaults(handler=cmd_classify)

    serve = commands.add_parser("serve", help="serve /api/classify and /api/health locally, as the Functions host does")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7071, help="port (default 7071, as func start; 0 picks a free one)")
    serve.add_argument(
        "--model", metavar="PATH", help="serve this bundle or AutoML run folder instead of the store or the sample"
    )
    serve.set_defaults(handler=cmd_serve)

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

    refresh = commands.add_parser(
        "refresh", help="find the best AutoML model of the labeling experiment and publish it (as RefreshModel does)"
    )
    refresh.add_argument("--dry-run", action="store_true", help="decide and print, publish nothing")
    refresh.add_argument("--run-dir", metavar="DIR", help="take a downloaded AutoML run folder instead of asking AML")
    refresh.set_defaults(handler=cmd_refresh)

    convert = commands.add_parser(
        "convert", help="convert an AutoML model.pt checkpoint to an ONNX bundle (needs torch)"
    )
    convert.add_argument(
        "model_pt", metavar="MODEL_PT", help="AutoML's model.pt (AutoML 1.25 or later), or the run folder holding it"
    )
    convert.add_argument("out_dir", metavar="OUT_DIR", help="bundle folder to write (model.onnx, labels.json, ...)")
    convert.set_defaults(handler=cmd_convert)

    search = commands.add_parser(
        "search-setup", help="create or update the Azure AI Search data source, index, skillset and indexer"
    )
    search.add_argument("--search-endpoint", required=True, metavar="URL", help="https://<service>.search.windows.net")
    search.add_argument(
        "--function-url", required=True, metavar="URL", help="the function app, https://<app>.azurewebsites.net"
    )
    search.add_argument(
        "--storage-resource-id", required=True, metavar="ID", help="resource id of the storage account with the images"
    )
    search.add_argument("--container", default="images", metavar="NAME", help="container with the images (images)")
    search.add_argument(
        "--prefix",
        default="automl-images",
        metavar="NAME",
        help="names <prefix>-datasource, -index, ... (automl-images)",
    )
    search.add_argument(
        "--auth-resource-id",
        metavar="APP_ID",
        help="Entra ID: the function app's app registration; the skill gets authResourceId APP_ID/.default",
    )
    search.add_argument(
        "--function-key-env",
        default="SKILL_FUNCTION_KEY",
        metavar="NAME",
        help="environment variable holding ClassifySkill's function key (SKILL_FUNCTION_KEY)",
    )
    search.add_argument(
        "--key-env", metavar="NAME", help="environment variable holding a search admin key (default: Entra ID sign-in)"
    )
    search.add_argument(
        "--detection",
        action="store_true",
        help="for an object detection model: index objects and objectLabels (infra/search/detection/)",
    )
    search.add_argument(
        "--batch-size", type=_positive_int, metavar="N", help="images per skill call (8; 4 with --detection)"
    )
    search.add_argument(
        "--degree-of-parallelism",
        type=_positive_int,
        metavar="N",
        help="skill calls in flight (4; 2 with --detection)",
    )
    search.add_argument(
        "--image-analysis",
        action="store_true",
        help="also run the built-in ImageAnalysisSkill (tags, captions) and index its outputs",
    )
    search.add_argument(
        "--visual-features",
        metavar="LIST",
        help="with --image-analysis: comma-separated, from adult, brands, categories, description, objects, tags "
        "(tags,description)",
    )
    search.add_argument(
        "--ai-services-endpoint",
        metavar="URL",
        help="with --image-analysis: bill this AI Services resource keylessly with the search service's identity",
    )
    search.add_argument(
        "--ai-services-key-env",
        metavar="NAME",
        help="with --image-analysis: environment variable holding a key of the AI Services resource to bill",
    )
    search.add_argument(
        "--per-page",
        action="store_true",
        help="render each PDF page as one image (imageAction generateNormalizedImagePerPage)",
    )
    search.add_argument(
        "--enrichment-cache",
        action="store_true",
        help="give the indexer an enrichment cache (preview API) so REINDEX_MODE=skills can re-run only the skill",
    )
    search.add_argument(
        "--cache-storage-resource-id",
        metavar="ID",
        help="with --enrichment-cache: resource id of the storage account for the cache (default: "
        "--storage-resource-id)",
    )
    search.add_argument("--dry-run", action="store_true", help="print the rendered JSON (key redacted), change nothing")
    search.set_defaults(handler=cmd_search_setup)

    migrate = commands.add_parser(
        "migrate-skillset",
        help="rewrite the older PowerSkill's skillset JSON to call this function app (prints the new JSON)",
    )
    migrate.add_argument("file", metavar="FILE", help="the skillset JSON (notebook or portal export); - for stdin")
    migrate.add_argument(
        "--function-url", required=True, metavar="URL", help="the function app, https://<app>.azurewebsites.net"
    )
    migrate.add_argument(
        "--function-key-env",
        default="SKILL_FUNCTION_KEY",
        metavar="NAME",
        help="environment variable holding the function key, sent as x-functions-key (SKILL_FUNCTION_KEY)",
    )
    migrate.add_argument(
        "--auth-resource-id",
        metavar="APP_ID",
        help="Entra ID: the function app's app registration; the skill gets authResourceId APP_ID/.default",
    )
    migrate.add_argument("--name", metavar="NAME", help="the skillset's name, when the file has none (the notebook's)")
    migrate.add_argument(
        "--ai-services-key-env",
        metavar="NAME",
        help="environment variable holding the AI Services key the skillset bills (when the file has none)",
    )
    migrate.add_argument(
        "--search-endpoint",
        metavar="URL",
        help="write the migrated skillset to this search service (create or update) instead of printing it",
    )
    migrate.add_argument(
        "--key-env", metavar="NAME", help="environment variable holding a search admin key (default: Entra ID sign-in)"
    )
    migrate.set_defaults(handler=cmd_migrate_skillset)

    reindex = commands.add_parser(
        "reindex", help="re-enrich the search index with the current model version, once (as RefreshModel does)"
    )
    reindex.add_argument("--now", action="store_true", help="ignore REINDEX_DELAY_SECONDS")
    reindex.add_argument("--dry-run", action="store_true", help="say what it would do; only GET requests")
    reindex.add_argument(
        "--status",
        action="store_true",
        help="print the current version, the version last re-enriched, the indexer's state and the stale documents",
    )
    reindex.set_defaults(handler=cmd_reindex)
    return parser


def quiet_azure_sdk(verbose: bool) -> None:
    """The Azure SDK's own log (azure-identity lists every credential it tried, some 40 lines, before our one
    `error:` line says what to do) is shown only with --verbose."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("azure").setLevel(logging.DEBUG)
    else:
        logging.getLogger("azure").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_azure_sdk(args.verbose)
    try:
        settings = Settings.from_env()
        return int(args.handler(args, settings))
    except ClassifierError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
