"""Reading the search index and its indexer: `python -m shared query` ("test the index"), and what other commands
need from the index (documents with a filter, facet buckets, the moments a label appears in the keyframes of a
video, the indexer's last run with its errors and warnings).

Everything goes through azure-search-documents' SearchClient and SearchIndexerClient (built by shared.search.client
with the same credential, retries and user agent as search-setup): `search()` for documents, counts and facets,
`get_indexer_status()` for the indexer. The index is the one search-setup creates: `labels`
(Collection(Edm.String), filterable, facetable), `images` (per image `label`, `confidence`, `labels`,
`modelVersion`, `pageNumber`), and with `--keyframes` `sourceVideo` and `timestampMs`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.core.errors import AppError
from shared.core.settings import Settings
from shared.search import client as searchclient

if TYPE_CHECKING:
    from azure.search.documents import SearchClient
    from azure.search.documents.indexes import SearchIndexerClient

USER_AGENT = "automl-image-skill-query"
# The fields a hit is shown with. `content` (a PDF's text) is left out: it can be megabytes per document.
HIT_FIELDS = ("metadata_storage_name", "metadata_storage_path", "labels", "images")
KEYFRAME_FIELDS = ("sourceVideo", "timestampMs")
LABEL_FACET = "labels"
MODEL_VERSION_FACET = "images/modelVersion"
VIDEO_FACET = "sourceVideo"
# Facet buckets asked for per field (the service's default is 10; counts can be approximate when a field has more
# distinct values than asked for, since each shard returns its own top values).
FACET_BUCKETS = 50
DEFAULT_TOP = 10
# `$skip` may not exceed 100,000 (Search Documents, REST): the most documents a paged read reaches.
MAX_SKIP = 100_000


class QueryError(AppError):
    """A query cannot be answered; one line saying what to do (never a key)."""


def odata_string(value: str) -> str:
    """A string literal for an OData filter: single quotes, a quote inside doubled."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class DocumentFilter:
    """Which documents a query reads. `label`: a label at or above the threshold in any of the document's images
    (`labels`); with `min_confidence`/`max_confidence` the same image's top label and its confidence must match
    (`images/any(...)`), so `min_confidence=None, max_confidence=0.5` without a label finds every document with an
    image classified below 0.5; `model_version`: an image classified by that version; `video`: keyframes of that
    video (`sourceVideo`, the keyframes index only)."""

    label: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    model_version: str | None = None
    video: str | None = None

    def odata(self) -> str | None:
        """The `$filter` expression, or None for every document."""
        clauses: list[str] = []
        image: list[str] = []
        if self.min_confidence is not None:
            image.append(f"i/confidence ge {self.min_confidence!r}")
        if self.max_confidence is not None:
            image.append(f"i/confidence le {self.max_confidence!r}")
        if self.label is not None:
            if image:
                image.insert(0, f"i/label eq {odata_string(self.label)}")
            else:
                clauses.append(f"labels/any(l: l eq {odata_string(self.label)})")
        if self.model_version is not None:
            image.append(f"i/modelVersion eq {odata_string(self.model_version)}")
        if image:
            clauses.append(f"images/any(i: {' and '.join(image)})")
        if self.video is not None:
            clauses.append(f"sourceVideo eq {odata_string(self.video)}")
        return " and ".join(clauses) or None


@dataclass(frozen=True)
class ImageResult:
    """One image's answer in the index: top label (None below the threshold), its confidence, the labels at or
    above the threshold, the model version."""

    label: str | None
    confidence: float | None
    labels: tuple[str, ...]
    model_version: str | None


@dataclass(frozen=True)
class Hit:
    """A document as `query` shows it: the source blob's name (its path in the container), its labels and images,
    and for a keyframe the video and timestamp."""

    name: str
    labels: tuple[str, ...]
    images: tuple[ImageResult, ...]
    source_video: str | None = None
    timestamp_ms: int | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "name": self.name,
            "labels": list(self.labels),
            "images": [
                {
                    "label": i.label,
                    "confidence": i.confidence,
                    "labels": list(i.labels),
                    "modelVersion": i.model_version,
                }
                for i in self.images
            ],
        }
        if self.source_video is not None:
            found["sourceVideo"] = self.source_video
            found["timestampMs"] = self.timestamp_ms
        return found


def _path_style(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def blob_name(document: dict[str, Any]) -> str:
    """The source blob's name in its container, from `metadata_storage_path` (the blob's URL:
    `https://<account>.blob.core.windows.net/<container>/<name>`), else `metadata_storage_name`."""
    url = document.get("metadata_storage_path")
    if isinstance(url, str) and url:
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        parts = path.split("/", 1)
        if len(parts) == 2 and parts[1]:
            # Azurite's path-style URLs carry the account first (http://127.0.0.1:10000/devstoreaccount1/<container>/...).
            if _path_style(urllib.parse.urlsplit(url).hostname or "") and "/" in parts[1]:
                return parts[1].split("/", 1)[1]
            return parts[1]
    name = document.get("metadata_storage_name")
    return str(name) if name else "(no name)"


def hit_from(document: dict[str, Any]) -> Hit:
    images = []
    for image in document.get("images") or []:
        if not isinstance(image, dict):
            continue
        confidence = image.get("confidence")
        images.append(
            ImageResult(
                label=image.get("label"),
                confidence=float(confidence) if isinstance(confidence, int | float) else None,
                labels=tuple(image.get("labels") or ()),
                model_version=image.get("modelVersion"),
            )
        )
    timestamp = document.get("timestampMs")
    return Hit(
        name=blob_name(document),
        labels=tuple(document.get("labels") or ()),
        images=tuple(images),
        source_video=document.get("sourceVideo"),
        timestamp_ms=int(timestamp) if isinstance(timestamp, int | float | str) and str(timestamp).isdigit() else None,
    )


@dataclass(frozen=True)
class Bucket:
    value: Any
    count: int


@dataclass(frozen=True)
class QueryResult:
    """One page of a query: `total` (with count=True, else None), facet buckets by facet field, the hits."""

    total: int | None
    facets: dict[str, list[Bucket]]
    hits: list[Hit]


@dataclass(frozen=True)
class Moment:
    """A time range of one video in which consecutive keyframes all carry `label`: from the first to the last of
    them (`start_ms`..`end_ms`, the keyframes' timestamps), the highest confidence of the label among them (None
    when the label was never an image's top label there, only one of several labels), and how many keyframes."""

    video: str
    label: str
    start_ms: int
    end_ms: int
    max_confidence: float | None
    frames: int

    def as_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "label": self.label,
            "startMs": self.start_ms,
            "endMs": self.end_ms,
            "maxConfidence": self.max_confidence,
            "frames": self.frames,
        }


def clock(ms: int) -> str:
    """Milliseconds as HH:MM:SS.mmm."""
    seconds, millis = divmod(max(ms, 0), 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _label_confidence(document: dict[str, Any], label: str) -> tuple[bool, float | None]:
    """Whether the keyframe carries `label` (at or above the threshold in one of its images) and the label's
    highest confidence where it is an image's top label."""
    carries = label in (document.get("labels") or ())
    best: float | None = None
    for image in document.get("images") or []:
        if not isinstance(image, dict):
            continue
        if label in (image.get("labels") or ()):
            carries = True
        confidence = image.get("confidence")
        if image.get("label") == label and isinstance(confidence, int | float):
            best = float(confidence) if best is None else max(best, float(confidence))
    return carries, best


def moments(keyframes: Iterable[dict[str, Any]], label: str, min_confidence: float | None = None) -> list[Moment]:
    """The ranges in which `label` appears: `keyframes` are keyframe documents (`sourceVideo`, `timestampMs`,
    `labels`, `images`) of one or more videos, any order; those of one video are sorted by timestamp, and a run of
    consecutive keyframes that all carry the label is one Moment. With `min_confidence`, a keyframe carries the
    label only when the label is an image's top label with at least that confidence. Returns the moments by
    video, then by start."""
    by_video: dict[str, list[tuple[int, bool, float | None]]] = {}
    for document in keyframes:
        video = document.get("sourceVideo")
        timestamp = document.get("timestampMs")
        if not isinstance(video, str) or not isinstance(timestamp, int | float):
            continue
        carries, confidence = _label_confidence(document, label)
        if min_confidence is not None and (confidence is None or confidence < min_confidence):
            carries = False
        by_video.setdefault(video, []).append((int(timestamp), carries, confidence))
    found: list[Moment] = []
    for video in sorted(by_video):
        run: list[tuple[int, float | None]] = []
        for timestamp, carries, confidence in [*sorted(by_video[video], key=lambda f: f[0]), (-1, False, None)]:
            if carries:
                run.append((timestamp, confidence))
                continue
            if run:
                scores = [c for _, c in run if c is not None]
                found.append(Moment(video, label, run[0][0], run[-1][0], max(scores) if scores else None, len(run)))
                run = []
    return found


@dataclass(frozen=True)
class IndexerIssue:
    """One error or warning of an indexer run: the document `key`, the `message`, and when the service gives
    them the failing `name` (a skill or field), `details` and a `documentation_link`."""

    key: str | None
    message: str
    name: str | None = None
    details: str | None = None
    documentation_link: str | None = None
    status_code: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "message": self.message,
            "name": self.name,
            "details": self.details,
            "documentationLink": self.documentation_link,
            **({"statusCode": self.status_code} if self.status_code is not None else {}),
        }


@dataclass(frozen=True)
class IndexerReport:
    """`GET /indexers('name')/search.status`: the indexer's `status` (running, error, unknown) and its last run."""

    name: str
    status: str
    last_status: str | None = None
    start: str | None = None
    end: str | None = None
    items_processed: int | None = None
    items_failed: int | None = None
    error_message: str | None = None
    errors: list[IndexerIssue] = field(default_factory=list)
    warnings: list[IndexerIssue] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        last = None
        if self.last_status is not None:
            last = {
                "status": self.last_status,
                "startTime": self.start,
                "endTime": self.end,
                "itemsProcessed": self.items_processed,
                "itemsFailed": self.items_failed,
                "errorMessage": self.error_message,
                "errors": [e.as_json() for e in self.errors],
                "warnings": [w.as_json() for w in self.warnings],
            }
        return {"indexer": self.name, "status": self.status, "lastResult": last}


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


def _time(value: Any) -> str | None:
    if value is None:
        return None
    iso = getattr(value, "isoformat", None)
    return str(iso()).replace("+00:00", "Z") if iso else str(value)


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    text = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Message:")), None)
    text = text or (lines[0] if lines else exc.__class__.__name__)
    return text[:300]


class IndexReader:
    """Reads one index and its indexer on a search service. Every method raises QueryError only."""

    def __init__(
        self, endpoint: str, index: str, indexer: str, credential: Any, *, key_source: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.index = index
        self.indexer = indexer
        self.credential = credential
        self.key_source = key_source
        self.options = searchclient.call_options(endpoint, credential)
        self._search: SearchClient | None = None
        self._indexers: SearchIndexerClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexReader:
        """SEARCH_ENDPOINT, SEARCH_INDEX_NAME, SEARCH_INDEXER_NAME; SEARCH_ADMIN_KEY as `api-key` when set, else
        DefaultAzureCredential (AZURE_CLIENT_ID for a user-assigned identity). QueryError without SEARCH_ENDPOINT."""
        if not settings.search_endpoint:
            raise QueryError(
                "SEARCH_ENDPOINT is not set: set it to the search service's URL, https://<service>.search.windows.net"
            )
        credential = searchclient.credential(settings.search_admin_key, settings.azure_client_id)
        return cls(
            settings.search_endpoint,
            settings.search_index_name,
            settings.search_indexer_name,
            credential,
            key_source="SEARCH_ADMIN_KEY" if settings.search_admin_key else None,
        )

    def search_client(self) -> SearchClient:
        if self._search is None:
            from azure.search.documents import SearchClient

            self._search = SearchClient(
                self.endpoint, self.index, self.credential, **searchclient.client_options(USER_AGENT)
            )
        return self._search

    def indexer_client(self) -> SearchIndexerClient:
        if self._indexers is None:
            self._indexers = searchclient.indexer_client(self.endpoint, self.credential, user_agent=USER_AGENT)
        return self._indexers

    @contextmanager
    def errors(self, action: str, kind: str = "index") -> Iterator[None]:
        """The SDK's exceptions as one QueryError line saying what to do."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = f"search service {self.endpoint}"
        try:
            yield
        except QueryError:
            raise
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise QueryError(f"{where} is unreachable while {action} ({searchclient.reason(exc)})") from None
        except ClientAuthenticationError as exc:
            if exc.response is None:  # azure-identity found no credential: no request was sent
                raise QueryError(
                    f"no credential for {where}: sign in with `az login` (or run where a managed identity is "
                    "available), or set SEARCH_ADMIN_KEY to a key of the service"
                ) from None
            raise QueryError(self._refused(where, action, exc, kind)) from None
        except ResourceNotFoundError:
            setting = "SEARCH_INDEXER_NAME" if kind == "indexer" else "SEARCH_INDEX_NAME"
            name = self.indexer if kind == "indexer" else self.index
            raise QueryError(
                f"{kind} {name!r} does not exist on {where}: set {setting} to its name (search-setup creates "
                "<prefix>-index and <prefix>-indexer)"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise QueryError(self._refused(where, action, exc, kind)) from None
            reason = _reason(exc)
            if exc.status_code == 400 and ("sourceVideo" in reason or "timestampMs" in reason):
                raise QueryError(
                    f"index {self.index!r} has no keyframe fields (sourceVideo, timestampMs): --video and --moments "
                    "read the keyframes index that `search-setup --keyframes` creates; set SEARCH_INDEX_NAME to it"
                ) from None
            raise QueryError(f"{where} answered {exc.status_code} while {action}: {reason}") from None

    def _refused(self, where: str, action: str, exc: Exception, kind: str) -> str:
        status = getattr(exc, "status_code", None) or 401
        if self.key_source:
            return (
                f"{where} refused {self.key_source} ({status}) while {action}: set it to a key of this service (an "
                "admin key; a query key reads documents but not the indexer's status)"
            )
        role = "Search Service Contributor" if kind == "indexer" else "Search Index Data Reader"
        return (
            f"{where} refused your Entra ID token ({status}) while {action}: your identity needs the {role} role, and "
            "the service's API access control must allow role-based access (or set SEARCH_ADMIN_KEY)"
        )

    def query(
        self,
        document_filter: DocumentFilter | None = None,
        *,
        top: int = DEFAULT_TOP,
        count: bool = False,
        facets: Iterable[str] = (),
        keyframes: bool = False,
    ) -> QueryResult:
        """The first `top` documents matching the filter (every document when None), with the total when `count`,
        and facet buckets for each field in `facets` (at most FACET_BUCKETS each). `keyframes` selects
        `sourceVideo` and `timestampMs` too (only the keyframes index has them)."""
        odata = document_filter.odata() if document_filter is not None else None
        select = [*HIT_FIELDS, *(KEYFRAME_FIELDS if keyframes else ())]
        facet_specs = [f"{name},count:{FACET_BUCKETS}" for name in facets]
        with self.errors(f"querying index {self.index!r}"):
            results = self.search_client().search(
                search_text="*",
                filter=odata,
                select=select,
                top=top,
                include_total_count=count or None,
                facets=facet_specs or None,
                **self.options,
            )
            hits = [hit_from(dict(document)) for _, document in zip(range(top), results, strict=False)]
            total = results.get_count() if count else None
            raw_facets = results.get_facets() if facet_specs else None
        buckets = {
            name: [Bucket(b.get("value"), int(b.get("count") or 0)) for b in values]
            for name, values in (raw_facets or {}).items()
        }
        return QueryResult(int(total) if total is not None else None, buckets, hits)

    def documents(
        self,
        odata: str | None,
        *,
        select: Iterable[str],
        order_by: Iterable[str] = (),
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every document matching `odata` (None: all), as dicts of the `select`ed fields, in `order_by` order,
        at most `limit`. The SDK reads page after page (the service's pages hold 50 documents without `top`, at most
        1,000 with it, and say where the next one starts), so memory stays at one page; Search Documents allows
        `skip` up to 100,000, so that is the most one filter reaches: narrow the filter for more. For issue-style
        uses such as the low-confidence images to label: `documents(DocumentFilter(max_confidence=0.5).odata(),
        select=HIT_FIELDS)`."""
        wanted = min(limit, MAX_SKIP) if limit is not None else MAX_SKIP
        with self.errors(f"reading documents of index {self.index!r}"):
            results = self.search_client().search(
                search_text="*",
                filter=odata,
                select=list(select),
                order_by=list(order_by) or None,
                top=wanted,
                **self.options,
            )
            for position, document in enumerate(results):
                if position >= wanted:
                    return
                yield dict(document)

    def moments(self, label: str, *, video: str | None = None, min_confidence: float | None = None) -> list[Moment]:
        """The moments `label` appears in the keyframes of each video (of `video` only, when given): the videos with
        a keyframe carrying it, then all keyframes of each of those videos in time order (the frames without the
        label end a range)."""
        wanted = DocumentFilter(label=label, video=video)
        videos = sorted(
            {
                str(d["sourceVideo"])
                for d in self.documents(wanted.odata(), select=["sourceVideo"])
                if d.get("sourceVideo") is not None
            }
        )
        found: list[Moment] = []
        for name in videos:
            frames = self.documents(
                DocumentFilter(video=name).odata(),
                select=["sourceVideo", "timestampMs", "labels", "images"],
                order_by=["timestampMs asc"],
            )
            found.extend(moments(frames, label, min_confidence))
        return found

    def indexer_status(self) -> IndexerReport:
        """The indexer's status and last run, with every error and warning the service reports for it."""
        with self.errors(f"reading the status of indexer {self.indexer!r}", "indexer"):
            status = self.indexer_client().get_indexer_status(self.indexer, **self.options)
        last = status.last_result
        if last is None:
            return IndexerReport(name=self.indexer, status=_text(status.status))
        return IndexerReport(
            name=self.indexer,
            status=_text(status.status),
            last_status=_text(last.status),
            start=_time(last.start_time),
            end=_time(last.end_time),
            items_processed=last.item_count,
            items_failed=last.failed_item_count,
            error_message=last.error_message,
            errors=[
                IndexerIssue(e.key, e.error_message, e.name, e.details, e.documentation_link, e.status_code)
                for e in last.errors or []
            ],
            warnings=[
                IndexerIssue(w.key, w.message, w.name, w.details, w.documentation_link) for w in last.warnings or []
            ],
        )
