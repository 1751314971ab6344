"""`classify`: image files or folders through the same batch scheduler the skill uses; drawing boxes."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TextIO

from PIL import Image

from shared.bundle.detection import DETECTION_TASK, SEGMENTATION_TASK
from shared.bundle.layout import SAMPLE_BUNDLE
from shared.cli.common import positive_int, probability, servable
from shared.core.errors import AppError, ImageError
from shared.core.paths import NAME_MAX_BYTES, PathError, PathKind, path_kind, shown
from shared.core.settings import Settings
from shared.inference.factory import load_model
from shared.inference.model import ImageLoader, InferenceOptions, Model
from shared.inference.scheduler import model_threads, run_batch

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
BATCH = 16
PROGRESS_MIN_FILES = 32
DEFAULT_TOP_K = 5
MAX_NAME_WIDTH = 60


@dataclass(frozen=True)
class InputFile:
    """One image to classify: its name as shown, its path (None when the argument cannot be read, with
    `problem` saying why) and where its drawing goes under --boxes, relative to OUT_DIR."""

    name: str
    path: Path | None
    drawing: PurePath
    problem: str = "no such file or folder"


def _kind(arg: str) -> tuple[PathKind | None, PathError | None]:
    """The argument's kind, or None and why it cannot be looked at (a name too long, no permission)."""
    try:
        return path_kind(arg), None
    except PathError as exc:
        return None, exc


def _image_files(paths: Sequence[str], warn: Callable[[str], None]) -> list[InputFile]:
    """Each argument as given: a file, or a folder's images (recursive, sorted). A missing or unusable path
    is an InputFile without a path; a folder without images is skipped with a warning."""
    files: list[InputFile] = []
    for arg in paths:
        kind, problem = _kind(arg)
        path = Path(arg)
        if kind == "dir":
            found = _folder_images(path)
            if not found:
                warn(f"warning: {_no_images(arg)}")
            # A folder's drawings keep its name and inner layout: `photos/a/x.png` and `other/a/x.png` differ.
            top = PurePath(path.resolve().name)
            files += [InputFile(str(f), f, top / f.relative_to(path)) for f in found]
        elif kind in ("file", "other"):
            files.append(InputFile(arg, path, PurePath(path.name or "image")))
        elif problem is not None:
            files.append(InputFile(shown(arg), None, PurePath("image"), f"cannot use the path: {problem.reason}"))
        else:
            files.append(InputFile(arg, None, PurePath(path.name or "image")))
    return files


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _no_images(arg: str) -> str:
    return f"no image files in {arg} (looked recursively for {', '.join(sorted(IMAGE_SUFFIXES))})"


def _nothing_to_classify(paths: Sequence[str]) -> str | None:
    """The error when no argument names an image at all (each missing path, each folder without images),
    or None when there is something to classify."""
    problems = []
    for arg in paths:
        kind, problem = _kind(arg)
        if kind == "dir":
            if _folder_images(Path(arg)):
                return None
            problems.append(_no_images(arg))
        elif kind in ("file", "other"):
            return None
        else:
            problems.append(str(problem) if problem else f"no such file or folder: {arg}")
    return "; ".join(problems)


def file_loader(path: Path | None, problem: str = "no such file or folder") -> ImageLoader:
    """Read the file when the batch gets to it; a missing or unreadable file is that image's error."""

    def load() -> bytes:
        if path is None:
            raise ImageError(problem)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read file ({exc.strerror or exc.__class__.__name__})") from None

    return load


BOXES_SUFFIX = ".boxes.png"


class Drawings:
    """Where `--boxes OUT_DIR` writes each image's drawing: OUT_DIR/<the input's name>.boxes.png, a folder's
    images under the folder's name with their inner layout, so two inputs never share a drawing (a clash left
    is numbered: `x.png.boxes-2.png`) and no name grows past the file system's 255 bytes."""

    def __init__(self, out_dir: str) -> None:
        self.root = Path(out_dir)
        self.used: set[Path] = set()
        self.written = 0
        self.first: Path | None = None
        kind, problem = _kind(out_dir)
        if problem:
            raise AppError(f"--boxes: {problem}")
        if kind not in ("dir", "missing"):
            raise AppError(f"--boxes {out_dir} is a file; give a folder to write the drawings into")

    def prepare(self) -> None:
        """Create the folder (AppError when it cannot be created or written)."""
        out_dir = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AppError(
                f"--boxes {out_dir}: cannot create the folder ({exc.strerror or exc.__class__.__name__})"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise AppError(f"--boxes {out_dir}: the folder is not writable; give another with --boxes OUT_DIR")

    def target(self, relative: PurePath) -> Path:
        """A new path under the root for the drawing of the input at `relative`."""
        parent = self.root.joinpath(*relative.parent.parts)
        for number in range(1, 10_000):
            suffix = BOXES_SUFFIX if number == 1 else f".boxes-{number}.png"
            name = _fit(relative.name, suffix)
            candidate = parent / name
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate
        raise AppError(f"--boxes: too many inputs named {relative.name}")

    def write(self, path: Path, objects: Sequence[dict[str, Any]], relative: PurePath) -> Path:
        """Draw and write one image; AppError (that image's error) when it cannot be written."""
        target = self.target(relative)
        try:
            draw_boxes(path, objects, target)
        except OSError as exc:
            raise AppError(
                f"cannot write its drawing {shown(target)} ({exc.strerror or exc.__class__.__name__})"
            ) from None
        self.written += 1
        self.first = self.first or target
        return target


def _fit(name: str, suffix: str) -> str:
    """`name + suffix`, the name cut (and a hash of it added) when the whole would pass NAME_MAX_BYTES."""
    whole = name + suffix
    if len(whole.encode("utf-8", "surrogateescape")) <= NAME_MAX_BYTES:
        return whole
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    room = NAME_MAX_BYTES - len(suffix) - len(digest) - 1
    cut = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f"{cut}~{digest}{suffix}"


def open_cli_model(model: str | None, settings: Settings) -> Model:
    """The model for `--model` (converting a model.pt-only run once), else AZUREML_MODEL_DIR, else the
    bundled sample. Raises BundleError."""
    path = servable(Path(model), settings) if model else settings.model_dir or SAMPLE_BUNDLE
    try:
        return load_model(path, threads=model_threads(settings))
    except AppError as exc:
        if model or settings.model_dir is None:
            raise
        raise AppError(f"AZUREML_MODEL_DIR: {exc}") from None


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
        raise AppError(problem)
    drawings = Drawings(args.boxes) if args.boxes else None
    out, err = sys.stdout, sys.stderr
    files = _image_files(args.paths, lambda text: print(text, file=err))
    model = open_cli_model(args.model, settings)
    detection = model.task in (DETECTION_TASK, SEGMENTATION_TASK)
    if args.boxes and not detection:
        raise AppError(f"--boxes needs an object detection model; {model.bundle.root} is a {model.task} classifier")
    if drawings is not None:
        drawings.prepare()
    top_k: int | None = args.top_k
    if not detection and not args.json:
        # The table shows every label above a multi-label threshold, whatever --top-k says.
        top_k = max(args.top_k or 1, len(model.labels) if model.task == "multilabel" else 1)
    options = InferenceOptions(
        top_k=top_k,
        default_top_k=DEFAULT_TOP_K,
        threshold=args.threshold,
        fast_decode=args.fast,
        limits=settings.image_limits(),
    )
    width = min(max(len(f.name) for f in files), MAX_NAME_WIDTH)
    if not args.json:
        out.write(
            f"model {model.version} ({model.task}, {len(model.labels)} labels) from {model.bundle.root}\n"
            + (f"{'file':<{width}}  objects\n" if detection else f"{'file':<{width}}  {'label':<32}  confidence\n")
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
            loaders = [file_loader(f.path, f.problem) for f in chunk]
            outcomes = run_batch(model, loaders, options, pool=pool, workers=workers)
            for item, answered in zip(chunk, outcomes, strict=True):
                name, outcome = item.name, answered
                if drawings is not None and outcome.data is not None and item.path is not None:
                    try:
                        drawn = drawings.write(item.path, outcome.data["objects"], item.drawing)
                        outcome = dataclasses.replace(outcome, data={**outcome.data, "boxes": str(drawn)})
                    except AppError as exc:
                        outcome = dataclasses.replace(outcome, data=None, errors=(*outcome.errors, str(exc)))
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
                    output.row(f"{shorten(name, width):<{width}}  {object_summary(outcome.data)}")
                else:
                    assert outcome.data is not None
                    shown = shorten(name, width)
                    for label, score in table_rows(outcome.data, args.top_k):
                        output.row(f"{shown:<{width}}  {label:<32}  {score:.4f}")
                        shown = ""
            output.advance(len(chunk))
    finally:
        output.close()
        if pool is not None:
            pool.shutdown()
    if drawings is not None and drawings.written:
        count = f"{drawings.written} drawing{'s' if drawings.written != 1 else ''}"
        err.write(f"wrote {count} with boxes to {drawings.root}/ (the first: {drawings.first})\n")
    if len(files) >= PROGRESS_MIN_FILES or failed:
        elapsed = time.perf_counter() - started
        err.write(f"{len(files) - failed} classified, {failed} failed in {elapsed:.1f} s\n")
    return 1 if failed else 0


def object_summary(data: dict[str, Any], shown: int = 3) -> str:
    """The CLI table's cell for one image: the object count and the best few objects."""
    objects = data.get("objects") or []
    best = ", ".join(f"{o['label']} {o['score']:.2f}" for o in objects[:shown])
    more = f", +{len(objects) - shown} more" if len(objects) > shown else ""
    return f"{len(objects)} object{'s' if len(objects) != 1 else ''}" + (f": {best}{more}" if objects else "")


# A mask's fill lets the photo show through (alpha out of 255).
MASK_ALPHA = 110


def _draw_masks(image: Image.Image, objects: Sequence[dict[str, Any]], colours: dict[str, str]) -> Image.Image:
    """`image` with each object's `polygon` (instance segmentation) filled in its label's colour, translucent;
    a contour inside another (a hole) is cut out (even-odd)."""
    from PIL import ImageChops, ImageDraw

    width, height = image.size
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    for obj in reversed(objects):
        contours = obj.get("polygon") or []
        if not contours:
            continue
        mask = Image.new("1", image.size, 0)
        for flat in contours:
            shape = Image.new("1", image.size, 0)
            points = [(x * width, y * height) for x, y in zip(flat[0::2], flat[1::2], strict=True)]
            ImageDraw.Draw(shape).polygon(points, fill=1)
            mask = ImageChops.logical_xor(mask, shape)
        colour = Image.new("RGBA", image.size, colours[obj["label"]])
        colour.putalpha(mask.convert("L").point(lambda v: MASK_ALPHA if v else 0))
        overlay = Image.alpha_composite(overlay, colour)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def draw_boxes(image_path: Path, objects: Sequence[dict[str, Any]], target: Path) -> Path:
    """Write `image_path` as PNG to `target` with each object's box and "label score" drawn on it, and its
    mask as a translucent fill when the object has a `polygon` (instance segmentation)."""
    from PIL import ImageDraw

    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    palette = ("#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de", "#00c7be")
    colours: dict[str, str] = {}
    for obj in objects:
        colours.setdefault(obj["label"], palette[len(colours) % len(palette)])
    if any(obj.get("polygon") for obj in objects):
        image = _draw_masks(image, objects, colours)
    draw = ImageDraw.Draw(image)
    width, height = image.size
    line = max(2, round(min(width, height) / 300))
    for obj in reversed(objects):  # the best object is drawn last, on top
        colour = colours.setdefault(obj["label"], palette[len(colours) % len(palette)])
        box = obj["box"]
        corners = (box["topX"] * width, box["topY"] * height, box["bottomX"] * width, box["bottomY"] * height)
        draw.rectangle(corners, outline=colour, width=line)
        caption = f"{obj['label']} {obj['score']:.2f}"
        left, top = corners[0], max(0.0, corners[1] - 12)
        text_box = draw.textbbox((left, top), caption)
        draw.rectangle(text_box, fill=colour)
        draw.text((left, top), caption, fill="white")
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG")
    return target


def register(commands: Any) -> None:
    """Add this module's subcommands to the parser's `commands` (argparse's subparsers)."""
    classify = commands.add_parser("classify", help="classify image files or folders")
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image file or folder (searched recursively)")
    classify.add_argument("--model", metavar="PATH", help="bundle folder or AutoML run folder (default: sample)")
    classify.add_argument(
        "--top-k",
        type=positive_int,
        metavar="K",
        help=f"predictions per image (--json: default {DEFAULT_TOP_K}; table: the top K rows besides the labels "
        "above the threshold; detection: the most objects, default the model's)",
    )
    classify.add_argument(
        "--threshold", type=probability, metavar="T", help="score cutoff (default 0.5 multi-label, 0 multi-class)"
    )
    classify.add_argument(
        "--json", action="store_true", help='one JSON object per image per line (failed files: {"file", "errors"})'
    )
    classify.add_argument(
        "--boxes",
        metavar="OUT_DIR",
        help="detection and segmentation models: write each image with its boxes (and masks) drawn to OUT_DIR",
    )
    classify.add_argument(
        "--fast",
        action="store_true",
        help="decode large JPEGs at reduced scale like the skill does (FAST_JPEG_DECODE); default: AutoML's exact path",
    )
    classify.set_defaults(handler=cmd_classify)
