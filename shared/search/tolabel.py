"""`to-label`: send the images the model is least sure of back to the labeling project's folder.

Least-confident sampling: the index already holds, per image, the top label's confidence and the model version
that produced it. The service is asked for the documents with an image of that version below the threshold
(`images/any(i: i/modelVersion eq 'V' and i/confidence lt X)`); the least confident `top` of them are copied into
the labeling project's Blob folder, which an Azure ML Data Labeling project with incremental refresh picks up.

Rules, so that the folder stays valid for the labeling project: only images are copied (the index's content type,
the source blob's content type, and the first bytes decoded as an image format the labeling project takes); the
target name is a hash of the source path plus its extension, so a second run finds its copies; nothing in the
folder is ever overwritten or deleted (uploads use If-None-Match: *); a manifest (append blob
`to-label-manifest.jsonl`) records each image sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from shared.core.errors import AppError
from shared.core.limits import ImageLimits
from shared.search.query import IndexReader, odata_string

MANIFEST = "to-label-manifest.jsonl"
DEFAULT_BELOW = 0.5
DEFAULT_TOP = 100
# Enough of a file to read any supported format's header.
HEADER_BYTES = 64 * 1024
# What the copy reads at most: the skill's own limit on an image's encoded size.
MAX_IMAGE_BYTES = ImageLimits().max_bytes
# The formats Azure ML image labeling projects take (Learn, "Set up an image labeling project": .jpg, .jpeg, .png,
# .jpe, .jfif, .bmp, .tif, .tiff, .dcm, .dicom; DICOM is not decoded here) by Pillow's format name, with the
# extension a copy gets when its source name has none of the accepted ones.
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif"}
EXTENSIONS = {".jpg", ".jpeg", ".png", ".jpe", ".jfif", ".bmp", ".tif", ".tiff"}
SELECT = ("metadata_storage_path", "metadata_storage_name", "metadata_content_type", "images")


class ToLabelError(AppError):
    """to-label cannot go on; one line saying what to do (never a key)."""


@dataclass(frozen=True)
class Candidate:
    """A document whose image `model_version` classified below the threshold: its least confident such image."""

    source: str  # metadata_storage_path: the source blob's URL
    name: str
    content_type: str | None
    confidence: float
    label: str | None
    model_version: str


@dataclass(frozen=True)
class Outcome:
    candidate: Candidate
    status: str  # sent | would-send | already-there | not-an-image | failed
    target: str | None
    message: str


def low_confidence_filter(model_version: str, below: float, label: str | None = None) -> str:
    """The `$filter` the service evaluates: an image of this version whose top label scores below `below` (and is
    `label`, when given)."""
    clauses = [f"i/modelVersion eq {odata_string(model_version)}", f"i/confidence lt {below!r}"]
    if label is not None:
        clauses.append(f"i/label eq {odata_string(label)}")
    return f"images/any(i: {' and '.join(clauses)})"


def _least_confident_image(document: dict[str, Any], model_version: str, below: float,
                           label: str | None) -> tuple[float, str | None] | None:  # fmt: skip
    best: tuple[float, str | None] | None = None
    for image in document.get("images") or []:
        if not isinstance(image, dict) or image.get("modelVersion") != model_version:
            continue
        confidence = image.get("confidence")
        if not isinstance(confidence, int | float) or confidence >= below:
            continue
        if label is not None and image.get("label") != label:
            continue
        if best is None or confidence < best[0]:
            best = (float(confidence), image.get("label"))
    return best


def least_confident(reader: IndexReader, model_version: str, below: float, top: int,
                    label: str | None = None) -> tuple[list[Candidate], int]:  # fmt: skip
    """The `top` least confident documents (ascending; ties by source path) and how many matched in all. The filter
    goes to the service; the index cannot sort on a field inside a collection, so the order is chosen here while
    the matches stream past (memory: `top` candidates)."""
    matched = 0

    def matches() -> Iterator[Candidate]:
        nonlocal matched
        for document in reader.documents(low_confidence_filter(model_version, below, label), select=SELECT):
            source = document.get("metadata_storage_path")
            found = _least_confident_image(document, model_version, below, label)
            if not isinstance(source, str) or not source or found is None:
                continue
            matched += 1
            path = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(source).path))
            yield Candidate(
                source=source,
                name=str(document.get("metadata_storage_name") or path.name),
                content_type=document.get("metadata_content_type"),
                confidence=found[0],
                label=found[1],
                model_version=model_version,
            )

    chosen = heapq.nsmallest(top, matches(), key=lambda c: (c.confidence, c.source))
    return chosen, matched


def target_name(folder: str, source: str, detected: str | None = None) -> str:
    """`<folder>/<sha256 of the source path, 32 hex>.<ext>`: the same source always gets the same name."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:32]
    suffix = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(source).path)).suffix.lower()
    if suffix not in EXTENSIONS:
        suffix = FORMATS.get(detected or "", ".jpg")
    return f"{folder}/{digest}{suffix}" if folder else f"{digest}{suffix}"


def image_format(header: bytes) -> str | None:
    """Pillow's format name when the first bytes are an image the labeling project takes, else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(header)) as image:
            fmt = image.format
            image.size  # noqa: B018 - the header was read far enough to know the size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return fmt if fmt in FORMATS else None


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:200]


@contextmanager
def _one_line(action: str) -> Iterator[None]:
    from azure.core.exceptions import AzureError

    try:
        yield
    except ToLabelError:
        raise
    except AzureError as exc:
        status = getattr(exc, "status_code", None)
        if status == 403 or exc.__class__.__name__ == "ClientAuthenticationError":
            raise ToLabelError(f"{action}: access denied ({_reason(exc)})") from None
        raise ToLabelError(f"{action}: {_reason(exc)}") from None


class Sources:
    """Reads source blobs by their URL: through one connection string's account (the URL must be in it), or with
    DefaultAzureCredential on the URL itself (https only: a token never crosses plain http)."""

    def __init__(self, service: Any | None, credential: Any | None) -> None:
        self.service = service
        self.credential = credential

    def blob(self, url: str) -> Any:
        from azure.storage.blob import BlobClient

        if self.service is not None:
            container, name = split_blob_url(url, self.service.url)
            return self.service.get_blob_client(container, name)
        if urllib.parse.urlsplit(url).scheme != "https":
            raise ToLabelError(
                f"{url} is not an https URL: read it with --source-connection-string-env NAME (Azurite's URLs are http)"
            )
        return BlobClient.from_blob_url(url, credential=self.credential)


def split_blob_url(url: str, account_url: str) -> tuple[str, str]:
    """(container, blob name) of `url` inside the account at `account_url`; ToLabelError when it is elsewhere."""
    blob = urllib.parse.urlsplit(url)
    account = urllib.parse.urlsplit(account_url)
    base = account.path.rstrip("/")
    path = urllib.parse.unquote(blob.path)
    if (
        (blob.hostname or "").lower() != (account.hostname or "").lower()
        or blob.port != account.port
        or not (path.startswith(base + "/"))
    ):
        raise ToLabelError(f"{url} is not in the storage account of --source-connection-string-env ({account_url})")
    container, _, name = path[len(base) + 1 :].partition("/")
    if not container or not name:
        raise ToLabelError(f"{url} does not name a blob in a container")
    return container, name


class Target:
    """The labeling project's folder: a container and a prefix. Writes only new blobs and appends to the manifest."""

    def __init__(self, container: Any, folder: str) -> None:
        self.container = container
        self.folder = folder.strip("/")

    def check(self) -> None:
        """ToLabelError when the container does not exist: the labeling project's dataset lives in it already."""
        with _one_line(f"opening container {self.container.container_name}"):
            if not self.container.exists():
                account = self.container.url.rsplit("/", 1)[0]
                raise ToLabelError(
                    f"container {self.container.container_name} does not exist in {account}: name the container of "
                    "the labeling project's dataset (--target-container)"
                )

    def exists(self, name: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return False
        return True

    def write_new(self, name: str, data: bytes, content_type: str) -> bool:
        """Upload `data` as a new blob; False when a blob of that name appeared meanwhile (never overwritten)."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        try:
            self.container.upload_blob(
                name, data, overwrite=False, content_settings=ContentSettings(content_type=content_type)
            )
        except ResourceExistsError:
            return False
        return True

    def append_manifest(self, entry: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceExistsError

        blob = self.container.get_blob_client(f"{self.folder}/{MANIFEST}" if self.folder else MANIFEST)
        with contextlib.suppress(ResourceExistsError):  # made by an earlier run: appended to
            blob.create_append_blob(if_none_match="*")
        blob.append_block((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))


def send(
    candidates: list[Candidate],
    sources: Sources,
    target: Target,
    *,
    dry_run: bool = False,
    report: Callable[[Outcome], None] = lambda outcome: None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Outcome]:
    """Copy each candidate into the target folder (dry run: check it and say what would be sent). One Outcome per
    candidate; a failure is that candidate's outcome and the others go on."""
    outcomes = []
    for candidate in candidates:
        try:
            outcome = _send_one(candidate, sources, target, dry_run=dry_run, now=now)
        except ToLabelError as exc:
            outcome = Outcome(candidate, "failed", None, f"{candidate.source}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the others
            outcome = Outcome(
                candidate, "failed", None, f"{candidate.source}: {exc.__class__.__name__}: {_reason(exc)}"
            )
        outcomes.append(outcome)
        report(outcome)
    return outcomes


def _send_one(candidate: Candidate, sources: Sources, target: Target, *, dry_run: bool,
              now: Callable[[], datetime]) -> Outcome:  # fmt: skip
    index_type = (candidate.content_type or "").split(";")[0].strip().lower()
    if index_type and not index_type.startswith("image/"):
        return Outcome(candidate, "not-an-image", None, f"{candidate.source}: not an image ({index_type})")
    name = target_name(target.folder, candidate.source)
    with _one_line(f"checking {name} in the target folder"):
        if target.exists(name):
            return Outcome(candidate, "already-there", name, f"{candidate.source}: already in the folder as {name}")
    blob = sources.blob(candidate.source)
    with _one_line("reading the source blob"):
        properties = blob.get_blob_properties()
        blob_type = (properties.content_settings.content_type or "").split(";")[0].strip().lower()
        if blob_type and not blob_type.startswith("image/") and blob_type != "application/octet-stream":
            return Outcome(candidate, "not-an-image", None, f"{candidate.source}: not an image ({blob_type})")
        if properties.size > MAX_IMAGE_BYTES:
            too_big = f"{properties.size} bytes, over the {MAX_IMAGE_BYTES}-byte limit"
            return Outcome(candidate, "not-an-image", None, f"{candidate.source}: {too_big}")
        header = blob.download_blob(offset=0, length=min(HEADER_BYTES, properties.size or HEADER_BYTES)).readall()
    detected = image_format(header)
    if detected is None:
        return Outcome(candidate, "not-an-image", None, f"{candidate.source}: not an image its labeling project takes")
    name = target_name(target.folder, candidate.source, detected)
    summary = f"{candidate.source} -> {name} ({candidate.label or 'no label'} {candidate.confidence:.4f})"
    if dry_run:
        return Outcome(candidate, "would-send", name, f"would send {summary}")
    with _one_line("copying"):
        data = blob.download_blob().readall() if properties.size > len(header) else header
        content_type = blob_type if blob_type.startswith("image/") else f"image/{detected.lower()}"
        if not target.write_new(name, data, content_type):
            return Outcome(candidate, "already-there", name, f"{candidate.source}: already in the folder as {name}")
        target.append_manifest(
            {
                "source": candidate.source,
                "target": name,
                "confidence": candidate.confidence,
                "label": candidate.label,
                "modelVersion": candidate.model_version,
                "time": now().isoformat().replace("+00:00", "Z"),
            }
        )
    return Outcome(candidate, "sent", name, f"sent {summary}")
