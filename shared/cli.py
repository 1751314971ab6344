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
from typing import TYPE_CHECKING, TextIO

from shared.bundle import SAMPLE_BUNDLE, ModelBundle, load_bundle
from shared.engine import Engine
from shared.errors import ClassifierError, ImageError
from shared.settings import Settings
from shared.skill import ClassifyOptions, ImageLoader, ImageOutcome, classify_batch, engine_threads

if TYPE_CHECKING:
    from shared.store import BlobModelStore

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
BATCH = 16
PROGRESS_MIN_FILES = 32


def _image_files(paths: Sequence[str]) -> Iterator[tuple[str, Path | None]]:
    """Each argument as given: a file, or a folder's images (recursive, sorted); None marks a missing path."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                yield str(found), found
        elif path.exists():
            yield arg, path
        else:
            yield arg, None


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


def servable(path: Path, settings: Settings) -> Path:
    """The folder itself, or, for a run that only has a usable model.pt, its converted ONNX bundle."""
    from shared.checkpoint import servable_folder

    return servable_folder(path, settings.model_cache_dir())


def open_engine(model: str | None, settings: Settings) -> Engine:
    """The engine for `--model` (converting a model.pt-only run once), else AZUREML_MODEL_DIR, else the
    bundled sample. Raises BundleError."""
    path = servable(Path(model), settings) if model else settings.model_dir or SAMPLE_BUNDLE
    return Engine(load_bundle(path), threads=engine_threads(settings))


def _print_row(out: TextIO, name: str, outcome: ImageOutcome, width: int) -> None:
    assert outcome.data is not None
    label = outcome.data["label"]
    shown = label if label is not None else "(none above threshold)"
    out.write(f"{name:<{width}}  {shown:<32}  {outcome.data['confidence']:.4f}\n")


def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    engine = open_engine(args.model, settings)
    options = ClassifyOptions(
        top_k=args.top_k,
        threshold=args.threshold,
        fast_decode=args.fast,
        limits=settings.image_limits(),
    )
    files = list(_image_files(args.paths))
    out, err = sys.stdout, sys.stderr
    if not files:
        err.write("error: no image files found in the given paths\n")
        return 1
    width = min(max(len(name) for name, _ in files), 60)
    if not args.json:
        out.write(
            f"model {engine.version} ({engine.task}, {len(engine.labels)} labels) from {engine.bundle.root}\n"
            f"{'file':<{width}}  {'label':<32}  confidence\n"
        )
    failed = 0
    show_progress = len(files) >= PROGRESS_MIN_FILES and err.isatty()
    workers = settings.decode_threads or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 and len(files) > 1 else None
    started = time.perf_counter()
    for start in range(0, len(files), BATCH):
        chunk = files[start : start + BATCH]
        outcomes = classify_batch(engine, [file_loader(path) for _, path in chunk], options, pool=pool)
        for (name, _), outcome in zip(chunk, outcomes, strict=True):
            if outcome.errors:
                failed += 1
                err.write(f"error: {name}: {'; '.join(outcome.errors)}\n")
            elif args.json:
                line: dict[str, object] = {"file": name, **(outcome.data or {})}
                if outcome.warnings:
                    line["warnings"] = list(outcome.warnings)
                out.write(json.dumps(line) + "\n")
            else:
                _print_row(out, name, outcome, width)
        if show_progress:
            err.write(f"\rclassified {min(start + BATCH, len(files))}/{len(files)}")
            err.flush()
    if pool is not None:
        pool.shutdown()
    if show_progress:
        err.write("\n")
    if len(files) >= PROGRESS_MIN_FILES or failed:
        elapsed = time.perf_counter() - started
        err.write(f"{len(files) - failed} classified, {failed} failed in {elapsed:.1f} s\n")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from shared.app import service
    from shared.devserver import make_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(settings, args.host, args.port)
    host, port = server.server_address[:2]
    from shared.errors import ModelNotReady

    try:
        service().holder.current()
    except ModelNotReady as exc:
        sys.stderr.write(f"warning: {exc}; answering 503 until it loads\n")
    status = service().holder.status()
    sys.stderr.write(
        f"serving {status['source']} on http://{host!s}:{port}/api/classify (POST) and /api/health (GET)"
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


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    threads = settings.engine_threads or None

    def validate(bundle: ModelBundle) -> None:
        Engine(bundle, threads=threads)  # loads, smoke-tests and checks the labels, or raises BundleError

    result = store.publish(servable(Path(args.path), settings), version=args.version, validate=validate)
    what = "uploaded" if result.uploaded else "already in the store"
    if result.promoted:
        was = f" (was {result.previous})" if result.previous else ""
        print(f"published {result.version} ({what}); current.json now points to it{was}")
    else:
        print(f"published {result.version} ({what}); it was already current")
    return 0


def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    from shared.store import _Unchanged

    store = open_store(settings)
    pointer = store.read_pointer()
    current = pointer.version if pointer is not None and not isinstance(pointer, _Unchanged) else None
    versions = store.list_versions()
    if not versions:
        print(f"no versions in {store.description}")
        return 0
    print(f"versions in {store.description} (* = current):")
    for info in versions:
        mark = "*" if info.version == current else " "
        if not info.complete:
            print(f"{mark} {info.version:<40} incomplete (no manifest.json: an upload that never finished)")
            continue
        metric = info.metric or {}
        metric_text = f"{metric.get('name')}={metric.get('value')}" if metric else "-"
        print(f"{mark} {info.version:<40} {info.created or '-':<21} {metric_text:<24} {info.size_bytes / 1e6:7.1f} MB")
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
    from shared.checkpoint import convert_checkpoint

    out = convert_checkpoint(Path(args.model_pt), Path(args.out_dir))
    bundle = load_bundle(out)
    Engine(bundle, threads=settings.engine_threads or None)
    parity = (bundle.manifest or {}).get("source", {}).get("parity_max_rel_diff")
    print(
        f"converted {args.model_pt} to {out}: {bundle.task}, {len(bundle.labels)} labels, "
        f"{bundle.preprocessing.resize}/{bundle.preprocessing.crop} px, opset {bundle.opset}, "
        f"ONNX vs PyTorch {parity:.1e} of the logits' scale"
    )
    return 0


def cmd_search_setup(args: argparse.Namespace, settings: Settings) -> int:
    from shared.searchsetup import main_search_setup

    return main_search_setup(args)


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _probability(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description="AutoML image classifier skill tools")
    commands = parser.add_subparsers(dest="command", required=True)

    classify = commands.add_parser("classify", help="classify image files or folders")
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image file or folder (searched recursively)")
    classify.add_argument("--model", metavar="PATH", help="bundle folder or AutoML run folder (default: sample)")
    classify.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="predictions per image")
    classify.add_argument(
        "--threshold", type=_probability, metavar="T", help="score cutoff (default 0.5 multi-label, 0 multi-class)"
    )
    classify.add_argument("--json", action="store_true", help="one JSON object per image per line")
    classify.add_argument(
        "--fast",
        action="store_true",
        help="decode large JPEGs at reduced scale like the skill does (FAST_JPEG_DECODE); default: AutoML's exact path",
    )
    classify.set_defaults(handler=cmd_classify)

    serve = commands.add_parser("serve", help="serve /api/classify and /api/health locally, as the Functions host does")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7071, help="port (default 7071, as func start; 0 picks a free one)")
    serve.set_defaults(handler=cmd_serve)

    publish = commands.add_parser("publish", help="upload a bundle or AutoML run folder to the Blob model store")
    publish.add_argument("path", metavar="PATH", help="bundle folder or downloaded AutoML run folder")
    publish.add_argument("--version", metavar="V", help="version name (default: the run id, else a content hash)")
    publish.set_defaults(handler=cmd_publish)

    versions = commands.add_parser("versions", help="list the versions in the model store; * marks the current one")
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
    convert.add_argument("model_pt", metavar="MODEL_PT", help="AutoML's model.pt (AutoML 1.25 or later)")
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
    search.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="images per skill call (8)")
    search.add_argument(
        "--degree-of-parallelism", type=_positive_int, default=4, metavar="N", help="skill calls in flight (4)"
    )
    search.add_argument("--dry-run", action="store_true", help="print the rendered JSON (key redacted), change nothing")
    search.set_defaults(handler=cmd_search_setup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.handler(args, settings))
    except ClassifierError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
