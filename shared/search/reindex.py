"""Re-enrichment: when a new model version becomes current, re-run the search indexer's enrichment once.

A pass (RefreshModel runs one on every tick; `python -m shared reindex` runs one by hand):

1. No record in the model store yet: the current version becomes the baseline; nothing else happens.
2. The current version is the recorded one: nothing to do.
3. It has been current for less than REINDEX_DELAY_SECONDS (the time every instance needs to load it):
   wait; a later pass goes on.
4. The indexer is running (`lastResult.status` is `inProgress`), or another pass holds the claim: defer.
5. Otherwise claim the version in the record (a conditional write: of two racing passes one wins), then
   `full`: reset the indexer and run it (GA REST API); `skills`: reset the classify skill (preview
   `search.resetskills`, which needs the indexer's enrichment cache) and run the indexer. Only when every
   call succeeded is the version recorded; on any failure the claim is released and the next pass retries.

A rollback is a change like any other: the recorded version differs from the current one.

Every call goes through azure-search-documents' SearchIndexerClient, built by shared.search.client (the one
place that builds the clients, shared with search-setup): its methods for reset, run and status, and its
pipeline (`send_request`: the same credential, retries and user agent) for the two preview calls it has no
method for (reading the indexer's `cache`, and `search.resetskills`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.core.errors import AppError
from shared.core.settings import Settings
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.errors import StoreConflict
from shared.modelstore.pointer import Pointer, Unchanged
from shared.search import client as searchclient
from shared.search.record import ReindexRecord, pointer_since, read_reindex_record, write_reindex_record

if TYPE_CHECKING:
    from azure.search.documents import SearchClient
    from azure.search.documents.indexes import SearchIndexerClient

logger = logging.getLogger(__name__)

# The enrichment cache and Reset Skills exist only in preview API versions; the SDK's own calls use its GA
# default (2026-04-01 in azure-search-documents 12.0.0).
PREVIEW_API_VERSION = searchclient.PREVIEW_API_VERSION
# A claim older than this is a pass that died between its claim and its record (the calls take seconds).
CLAIM_EXPIRES_S = 900
USER_AGENT = "automl-image-skill-reindex"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# The index field search-setup --vectors renders for the skill's `embedding` (shared.search.templates).
VECTOR_FIELD = "imageEmbedding"


class ReindexError(AppError):
    """A pass cannot go on; the message is one line naming what to fix (never a key)."""


class IndexerBusy(ReindexError):
    """The indexer answered 409 to `run`: another execution is in progress."""


def _utc(seconds: float) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(seconds))


def _parse_utc(text: str | None) -> float | None:
    import calendar

    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, TIME_FORMAT)))
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    # The SDK's HttpResponseError text starts with "() " or "(Code) " and repeats the message on its own line.
    text = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Message:")), None)
    text = text or (lines[0] if lines else exc.__class__.__name__)
    return text[:300]


def _text(value: Any) -> str:
    """An SDK enum member (or a value it does not know yet) as the service's string."""
    return str(getattr(value, "value", value))


@dataclass(frozen=True)
class IndexerState:
    """From `GET /indexers('name')/search.status`: `status` (running, error, unknown) and the last
    execution's status (success, inProgress, transientFailure, persistentFailure, reset), with its end."""

    status: str
    last_status: str | None
    last_end: str | None

    @property
    def running(self) -> bool:
        return self.last_status == "inProgress"

    def describe(self) -> str:
        if self.last_status is None:
            return f"{self.status}, never run"
        if self.running:
            return f"{self.status}, a run is in progress"
        return f"{self.status}, last run {self.last_status}" + (f" (ended {self.last_end})" if self.last_end else "")


class SearchService:
    """The calls a pass makes, on one SearchIndexerClient; every method raises ReindexError only."""

    def __init__(self, settings: Settings, client: SearchIndexerClient, credential: Any) -> None:
        self.settings = settings
        self.client = client
        self.credential = credential
        self.endpoint = settings.search_endpoint or ""

    @classmethod
    def from_settings(cls, settings: Settings) -> SearchService:
        """SEARCH_ADMIN_KEY as `api-key` when set, else DefaultAzureCredential (the managed identity picked by
        AZURE_CLIENT_ID in Azure, `az login` locally). Raises ReindexError without SEARCH_ENDPOINT."""
        if not settings.search_endpoint:
            raise ReindexError("re-enrichment needs SEARCH_ENDPOINT, the search service's URL")
        credential = searchclient.credential(settings.search_admin_key, settings.azure_client_id)
        client = searchclient.indexer_client(settings.search_endpoint, credential, user_agent=USER_AGENT)
        return cls(settings, client, credential)

    def search_client(self) -> SearchClient:
        from azure.search.documents import SearchClient

        options = searchclient.client_options(USER_AGENT)
        return SearchClient(self.endpoint, self.settings.search_index_name, self.credential, **options)

    @contextmanager
    def errors(self, action: str, kind: str, name: str) -> Iterator[None]:
        """The SDK's exceptions as one ReindexError line saying what to do."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceExistsError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = f"search service {self.endpoint}"
        try:
            yield
        except ReindexError:
            raise
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ReindexError(f"{where} is unreachable while {action} ({_reason(exc)})") from None
        except ClientAuthenticationError as exc:
            if exc.__class__.__name__ == "CredentialUnavailableError":  # azure.identity found no credential
                raise ReindexError(
                    f"no credential for {where}: in Azure enable the app's managed identity (AZURE_CLIENT_ID for a "
                    "user-assigned one), locally `az login`, or set SEARCH_ADMIN_KEY"
                ) from None
            raise ReindexError(self._refused(where, action, exc)) from None
        except ResourceNotFoundError:
            setting = {
                "indexer": "SEARCH_INDEXER_NAME",
                "skillset": "SEARCH_SKILLSET_NAME",
                "index": "SEARCH_INDEX_NAME",
            }
            raise ReindexError(
                f"{kind} {name!r} does not exist on {where}: set {setting[kind]} to its name, or create it with "
                "`python -m shared search-setup`"
            ) from None
        except ResourceExistsError as exc:
            raise IndexerBusy(f"indexer {name!r} is already running ({_reason(exc)})") from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise ReindexError(self._refused(where, action, exc)) from None
            raise ReindexError(f"{where} answered {exc.status_code} while {action}: {_reason(exc)}") from None

    def _refused(self, where: str, action: str, exc: Exception) -> str:
        status = getattr(exc, "status_code", None) or 401
        if self.settings.search_admin_key:
            return (
                f"{where} refused SEARCH_ADMIN_KEY ({status}) while {action}: set it to an admin key of this service "
                "(not a query key), or remove it to use the managed identity"
            )
        return (
            f"{where} refused the app's Entra ID token ({status}) while {action}: give the identity the Search Service "
            "Contributor role (Search Index Data Reader too for `reindex --status`), and allow role-based access "
            "on the service (API access control: both), or set SEARCH_ADMIN_KEY"
        )

    def _preview(self, method: str, path: str, *, action: str, kind: str, name: str, body: Any = None) -> Any:
        """One preview call through the SDK client's own pipeline; the JSON answer (None when empty)."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceExistsError,
            ResourceNotFoundError,
            map_error,
        )

        error_map = {401: ClientAuthenticationError, 404: ResourceNotFoundError, 409: ResourceExistsError}
        with self.errors(action, kind, name):
            response = searchclient.send_preview(self.client, method, path, api_version=PREVIEW_API_VERSION, body=body)
            if response.status_code >= 400:
                map_error(status_code=response.status_code, response=response, error_map=error_map)
                raise HttpResponseError(response=response)
            return response.json() if response.content else None

    def state(self) -> IndexerState:
        name = self.settings.search_indexer_name
        with self.errors(f"reading the status of indexer {name!r}", "indexer", name):
            status = self.client.get_indexer_status(name)
        last = status.last_result
        return IndexerState(
            status=_text(status.status),
            last_status=_text(last.status) if last is not None else None,
            last_end=_utc(last.end_time.timestamp()) if last is not None and last.end_time else None,
        )

    def has_cache(self) -> bool:
        """Whether the indexer has an enrichment cache (the `cache` property, only in preview API versions)."""
        name = self.settings.search_indexer_name
        definition = self._preview(
            "GET", f"/indexers('{name}')", action=f"reading indexer {name!r}", kind="indexer", name=name
        )
        cache = definition.get("cache") if isinstance(definition, dict) else None
        return isinstance(cache, dict) and bool(cache.get("storageConnectionString"))

    def reset_indexer(self) -> None:
        name = self.settings.search_indexer_name
        with self.errors(f"resetting indexer {name!r}", "indexer", name):
            self.client.reset_indexer(name)

    def reset_skill(self) -> None:
        skillset = self.settings.search_skillset_name
        self._preview(
            "POST",
            f"/skillsets('{skillset}')/search.resetskills",
            action=f"resetting skill {self.settings.search_skill_name!r} of skillset {skillset!r}",
            kind="skillset",
            name=skillset,
            body={"skillNames": [self.settings.search_skill_name]},
        )

    def run_indexer(self) -> None:
        name = self.settings.search_indexer_name
        with self.errors(f"running indexer {name!r}", "indexer", name):
            self.client.run_indexer(name)

    def vector_dimensions(self) -> int | None:
        """The dimensions of the index's vector field VECTOR_FIELD, or None when the index has none."""
        index = self.settings.search_index_name
        client = searchclient.index_client(self.endpoint, self.credential, user_agent=USER_AGENT)
        with self.errors(f"reading index {index!r}", "index", index):
            definition = client.get_index(index)
        for field_ in definition.fields or []:
            if field_.name == VECTOR_FIELD:
                return int(field_.vector_search_dimensions) if field_.vector_search_dimensions else None
        return None

    def check_vector_field(self, store: BlobModelStore, version: str, embedded: str) -> None:
        """Raise ReindexError when the index has a vector field whose dimensions the version's embedding does
        not have (the service would refuse every document's vector): a vector field's dimensions cannot
        change, so a new model with another width needs a new index. The index is read only when the width
        differs from that of `embedded`, the version the index holds; versions published without an
        `embedding` entry in their manifest are not checked."""
        found = store.read_manifest(version)
        if found is None or "embedding" not in found[0]:
            return
        before = store.read_manifest(embedded) if embedded != version else found
        if before is not None and before[0].get("embedding") == found[0]["embedding"]:
            return
        wanted = self.vector_dimensions()
        if wanted is None:
            return
        embedding = found[0]["embedding"]
        width = embedding.get("dimensions") if isinstance(embedding, dict) else None
        index = self.settings.search_index_name
        if width is None:
            raise ReindexError(
                f"model {version} has no embedding, but index {index!r} has the vector field {VECTOR_FIELD!r}: "
                "nothing was re-enriched; promote a classification model, or set up an index without --vectors"
            )
        if width != wanted:
            raise ReindexError(
                f"model {version} embeds images in {width} dimensions but {VECTOR_FIELD!r} of index {index!r} holds "
                f"{wanted}: a vector field's dimensions cannot change, so nothing was re-enriched; create a new "
                "index with `python -m shared search-setup --vectors --prefix <new prefix>` and point "
                "SEARCH_INDEX_NAME at it"
            )

    def stale_documents(self, version: str) -> int:
        """How many documents hold an image classified by a version other than `version` (a `$count` query)."""
        index = self.settings.search_index_name
        quoted = version.replace("'", "''")
        with self.errors(f"counting documents in index {index!r}", "index", index):
            results = self.search_client().search(
                search_text="*",
                filter=f"images/any(i: i/modelVersion ne null and i/modelVersion ne '{quoted}')",
                include_total_count=True,
                top=0,
            )
            count = results.get_count()
        return int(count or 0)


@dataclass(frozen=True)
class ReindexOutcome:
    """What a pass did. `action`: off, no-model, baseline, nothing, waiting, deferred, would, done, running
    (the indexer's run after a reset goes on), finished (it ended: the vectorizer switches)."""

    action: str
    message: str
    current: str | None = None
    recorded: str | None = None


def _pointer(store: BlobModelStore) -> Pointer | None:
    pointer = store.read_pointer()
    return None if isinstance(pointer, Unchanged) else pointer


def run_pass(
    settings: Settings,
    store: BlobModelStore,
    service: SearchService | None,
    *,
    clock: Callable[[], float] = time.time,
    now: bool = False,
    dry_run: bool = False,
) -> ReindexOutcome:
    """One pass (see the module docstring). `now` ignores REINDEX_DELAY_SECONDS; `dry_run` makes only GET
    requests and writes nothing. `clock` gives seconds since the epoch. Raises ReindexError (search service)
    or StoreError (model store), one line each; the record is then as it was, or its claim released."""
    mode = settings.reindex_mode
    if mode == "off" or service is None:
        return ReindexOutcome("off", "re-enrichment is off (set SEARCH_ENDPOINT, and REINDEX_MODE full or skills)")
    pointer = _pointer(store)
    if pointer is None:
        return ReindexOutcome("no-model", f"nothing to re-enrich: no model is published in {store.description}")
    current = pointer.version
    record = read_reindex_record(store)
    if record is None:
        if dry_run:
            return ReindexOutcome("baseline", f"would take {current} as the baseline; nothing to re-enrich", current)
        with suppress(StoreConflict):  # another pass wrote the baseline first
            write_reindex_record(store, version=current, mode="baseline", expected=None, recorded=_utc(clock()))
        return ReindexOutcome(
            "baseline", f"took {current} as the baseline: the index is re-enriched from the next version on", current
        )
    if record.version == current:
        if record.embedded == current:
            return ReindexOutcome(
                "nothing",
                f"nothing to do: the index was re-enriched with {current} ({record.recorded})",
                current,
                current,
            )
        return _follow_run(settings, store, service, record, current, dry_run=dry_run)
    age = clock() - pointer_since(store, pointer)
    if age < settings.reindex_delay_s and not now:
        return ReindexOutcome(
            "waiting",
            f"waiting: {current} became current {max(age, 0):.0f} s ago; the index is re-enriched with it once every "
            f"instance serves it, after {settings.reindex_delay_s:.0f} s (REINDEX_DELAY_SECONDS)",
            current,
            record.version,
        )
    claimed_at = _parse_utc(record.claimed)
    if record.pending is not None and claimed_at is not None and clock() - claimed_at < CLAIM_EXPIRES_S:
        return ReindexOutcome(
            "deferred",
            f"deferred: another pass is re-enriching the index with {record.pending} (claimed {record.claimed})",
            current,
            record.version,
        )
    if mode == "skills" and not service.has_cache():
        raise ReindexError(
            f"REINDEX_MODE=skills needs an enrichment cache on indexer {settings.search_indexer_name!r}, and it has "
            "none: run `python -m shared search-setup --enrichment-cache`, or set REINDEX_MODE=full"
        )
    state = service.state()
    if state.running:
        return ReindexOutcome(
            "deferred",
            f"deferred: indexer {settings.search_indexer_name!r} is running; the next pass re-enriches with {current}",
            current,
            record.version,
        )
    service.check_vector_field(store, current, record.embedded)
    what = (
        f"reset indexer {settings.search_indexer_name!r} and run it"
        if mode == "full"
        else f"reset skill {settings.search_skill_name!r} of skillset {settings.search_skillset_name!r} and run "
        f"indexer {settings.search_indexer_name!r}"
    )
    if dry_run:
        return ReindexOutcome(
            "would",
            f"would {what} (mode {mode}): the index holds {record.version}, current is {current}",
            current,
            record.version,
        )
    try:
        claim = write_reindex_record(
            store,
            version=record.version,
            mode=record.mode,
            expected=record,
            pending=current,
            claimed=_utc(clock()),
            recorded=record.recorded,
            embedded=record.embedded,
        )
    except StoreConflict:
        return ReindexOutcome(
            "deferred", f"deferred: another pass is re-enriching the index with {current}", current, record.version
        )
    try:
        if mode == "full":
            service.reset_indexer()
        else:
            service.reset_skill()
        service.run_indexer()
    except BaseException as exc:
        _release(store, claim, record)
        if isinstance(exc, IndexerBusy):
            return ReindexOutcome(
                "deferred",
                f"deferred: indexer {settings.search_indexer_name!r} started running meanwhile (409); the next pass "
                f"re-enriches with {current}",
                current,
                record.version,
            )
        raise
    write_reindex_record(
        store, version=current, mode=mode, expected=claim, recorded=_utc(clock()), embedded=record.embedded
    )
    done = (
        f"reset indexer {settings.search_indexer_name!r} and started a run"
        if mode == "full"
        else f"reset skill {settings.search_skill_name!r} and started indexer {settings.search_indexer_name!r}"
    )
    return ReindexOutcome(
        "done", f"re-enriching the index with {current} (was {record.version}): {done}", current, record.version
    )


def _follow_run(
    settings: Settings,
    store: BlobModelStore,
    service: SearchService,
    record: ReindexRecord,
    current: str,
    *,
    dry_run: bool,
) -> ReindexOutcome:
    """A re-enrichment was started (`record.version` is current): record it as finished once the indexer's
    last run ended with success after the pass that started it (`record.recorded`). Until then the vectorizer
    answers with `record.embedded`, the version the indexed vectors come from."""
    state = service.state()
    started = _parse_utc(record.recorded)
    ended = _parse_utc(state.last_end)
    name = settings.search_indexer_name
    if state.running or state.last_status != "success" or started is None or ended is None or ended < started:
        return ReindexOutcome(
            "running",
            f"re-enriching with {current}: indexer {name!r} is {state.describe()}; the vectorizer answers with "
            f"{record.embedded} until a run started after {record.recorded} ends with success",
            current,
            record.version,
        )
    if dry_run:
        return ReindexOutcome(
            "would",
            f"would record that re-enrichment with {current} finished (indexer {name!r} {state.describe()})",
            current,
            record.version,
        )
    try:
        write_reindex_record(
            store, version=current, mode=record.mode, expected=record, recorded=record.recorded, embedded=current
        )
    except StoreConflict:
        return ReindexOutcome("deferred", "deferred: another pass updated the re-enrichment record", current, current)
    return ReindexOutcome(
        "finished",
        f"re-enrichment with {current} finished (indexer {name!r} {state.describe()}): the vectorizer answers "
        f"with {current} from now on",
        current,
        current,
    )


def _release(store: BlobModelStore, claim: ReindexRecord, record: ReindexRecord) -> None:
    """Put the record back as it was before the claim, so the next pass retries at once; if even that fails,
    the claim expires after CLAIM_EXPIRES_S."""
    try:
        write_reindex_record(
            store,
            version=record.version,
            mode=record.mode,
            expected=claim,
            recorded=record.recorded,
            embedded=record.embedded,
        )
    except AppError as exc:
        logger.warning("could not release the re-enrichment claim (%s); it expires in %d s", exc, CLAIM_EXPIRES_S)


def open_for_pass(settings: Settings) -> tuple[BlobModelStore, SearchService | None]:
    """The model store and the search service a pass needs (no service when REINDEX_MODE is off)."""
    store = BlobModelStore.from_settings(settings)
    if settings.reindex_mode == "off":
        if store is None:
            raise ReindexError(
                "no model store is configured: set MODEL_BLOB_CONNECTION_STRING or MODEL_BLOB_ACCOUNT_URL"
            )
        return store, None
    if store is None:
        raise ReindexError(
            "re-enrichment reads the model store: set MODEL_BLOB_CONNECTION_STRING or MODEL_BLOB_ACCOUNT_URL"
        )
    return store, SearchService.from_settings(settings)


def run_scheduled(settings: Settings | None = None, *, clock: Callable[[], float] = time.time) -> ReindexOutcome | None:
    """RefreshModel's pass: silent when re-enrichment is off, else one INFO line, or one ERROR line on failure."""
    started = time.monotonic()
    try:
        settings = settings or Settings.from_env()
        if settings.reindex_mode == "off":
            return None
        store, service = open_for_pass(settings)
        outcome = run_pass(settings, store, service, clock=clock)
    except AppError as exc:
        logger.error("reindex failed after %.0f ms: %s", 1000 * (time.monotonic() - started), exc)
        return None
    logger.info("reindex: %s", outcome.message)
    return outcome


@dataclass(frozen=True)
class ReindexStatus:
    current: str | None
    recorded: ReindexRecord | None
    indexer: IndexerState
    stale: int | None


def read_status(settings: Settings, store: BlobModelStore, service: SearchService) -> ReindexStatus:
    """`reindex --status`: the current version, the version last re-enriched, the indexer's state and how many
    documents hold an image classified by another version than the current one. Only GET requests (and the
    search query, a POST that reads)."""
    pointer = _pointer(store)
    record = read_reindex_record(store)
    state = service.state()
    stale = service.stale_documents(pointer.version) if pointer is not None else None
    return ReindexStatus(pointer.version if pointer else None, record, state, stale)
