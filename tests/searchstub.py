"""A stand-in Azure AI Search service on 127.0.0.1 for the re-enrichment tests.

It records every request and answers the few operations a re-enrichment pass makes the way the REST API
reference documents them, in both URL forms (`/indexers/{name}/reset` and the SDK's
`/indexers('{name}')/search.reset`):

- `POST .../reset` 204; `POST .../run` 202, or 409 while a run is in progress (the service's message, as
  users report it: "Another indexer invocation is currently in progress; concurrent invocations are not
  allowed."); after a run is accepted, `lastResult.status` is `inProgress` until the test calls
  `finish_run()`;
- `GET .../status` 200 with the shape of the real `SearchIndexerStatus` JSON (`name`, `status`,
  `lastResult`, `executionHistory`, `limits`);
- `GET /indexers('{name}')` 200 with the definition; its `cache` only on a `-preview` api-version (GA
  versions do not have the property);
- `POST /skillsets/{name}/resetskills` or `/skillsets('{name}')/search.resetskills` 204, preview versions only;
- `POST /indexes('{name}')/docs/search.post.search` or `/indexes/{name}/docs/search` (Search Documents, REST):
  `filter` (the OData subset of tests/odata.py; a field the index schema lacks is the service's 400), `select`,
  `orderby`, `count` (`@odata.count`), `facets` (`field,count:N`: `@search.facets` buckets `{value, count}`, by
  count descending; a field of a complex collection counts each document once per value), `skip` and `top` with
  the service's server-side paging: without `top` at most 50 documents, with `top` above 1000 at most 1000, and
  when more remain `@odata.nextLink` and `@search.nextPageParameters` (the same request with `skip` moved on and
  `top` lowered), which the SDK follows; `skip` above 100,000 is refused. Documents are put in with
  add_documents() (what an indexer would have written);
- the status's `lastResult` carries the run's per-item `errors` (`key`, `errorMessage`, `statusCode`, `name`,
  `details`, `documentationLink`) and `warnings` (`key`, `message`, `name`, `details`, `documentationLink`) as
  finish_run() was given them;
- `PUT /{datasources|indexes|skillsets|indexers}/{name}` or `('{name}')` (what search-setup writes): 201 and
  the stored definition when it is new, 200 when it replaces one (Create or Update, `Prefer:
  return=representation`); 400 when the body's name is not the URL's; an indexer with a `cache` on a GA
  api-version is refused with the 400 Microsoft Learn quotes ("Configure an enrichment cache", common
  errors); a new indexer starts a run at once, as the service runs a new indexer on creation;
- `GET` of a stored data source, index or skillset in both forms (with `@odata.context` and `@odata.etag`),
  and of an indexer written with PUT: its definition, `cache` only on a preview version (`null` when it has
  none, as Learn says a preview GET shows it);
- 404 for an unknown indexer, skillset or index; 403 for a missing or wrong `api-key`; refuse() scripts an
  error answer for every request to one collection.

Errors have the service's envelope `{"error": {"code": "", "message": "..."}}`.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.odata import ODataError, compile_filter, values_at

ROUTES = [
    # (method, pattern, operation); both the classic and the OData-style URL forms.
    ("GET", re.compile(r"^/indexers/([^/]+)/status$"), "status"),
    ("GET", re.compile(r"^/indexers\('([^']+)'\)/search\.status$"), "status"),
    ("POST", re.compile(r"^/indexers/([^/]+)/reset$"), "reset"),
    ("POST", re.compile(r"^/indexers\('([^']+)'\)/search\.reset$"), "reset"),
    ("POST", re.compile(r"^/indexers/([^/]+)/run$"), "run"),
    ("POST", re.compile(r"^/indexers\('([^']+)'\)/search\.run$"), "run"),
    ("GET", re.compile(r"^/indexers/([^/()]+)$"), "get_indexer"),
    ("GET", re.compile(r"^/indexers\('([^']+)'\)$"), "get_indexer"),
    ("POST", re.compile(r"^/skillsets/([^/]+)/resetskills$"), "resetskills"),
    ("POST", re.compile(r"^/skillsets\('([^']+)'\)/search\.resetskills$"), "resetskills"),
    ("POST", re.compile(r"^/indexes\('([^']+)'\)/docs/search\.post\.search$"), "search"),
    ("POST", re.compile(r"^/indexes/([^/]+)/docs/search$"), "search"),
    ("PUT", re.compile(r"^/(datasources|indexes|skillsets|indexers)/([^/()]+)$"), "put"),
    ("PUT", re.compile(r"^/(datasources|indexes|skillsets|indexers)\('([^']+)'\)$"), "put"),
    ("GET", re.compile(r"^/(datasources|indexes|skillsets)/([^/()]+)$"), "get_definition"),
    ("GET", re.compile(r"^/(datasources|indexes|skillsets)\('([^']+)'\)$"), "get_definition"),
]
COLLECTIONS = ("datasources", "indexes", "skillsets", "indexers")
KIND = {"datasources": "data source", "indexes": "index", "skillsets": "skillset", "indexers": "indexer"}
# Microsoft Learn, "Configure an enrichment cache", common errors: `cache` sent on a GA api-version.
CACHE_ON_GA = (
    "The request is invalid. Details: indexer : A resource without a type name was found, but no expected type "
    "was specified. To allow entries without type information, the expected type must also be specified when the "
    "model is specified."
)
ETAG = '"0x8DD0000000000000"'
NOT_FOUND = "No {kind} with the name '{name}' was found in a service named '{service}'."
BUSY = "Another indexer invocation is currently in progress; concurrent invocations are not allowed."
STATUS_TYPE = "Microsoft.Azure.Search.V2019_05_06.IndexerExecutionInfo"
LIMITS = {"maxRunTime": "PT2H", "maxDocumentExtractionSize": 16777216, "maxDocumentContentCharactersToExtract": 32768}


def _names(value: Any) -> list[str]:
    """A POST body's comma-separated list (`select`, `orderby`) or JSON array, as names."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _order(clause: str) -> tuple[str, bool]:
    parts = clause.split()
    if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("asc", "desc")):
        raise ODataError(f"Invalid expression: '{clause}' is not a valid $orderby clause.")
    return parts[0], len(parts) == 2 and parts[1] == "desc"


def _facet(spec: str) -> tuple[str, int]:
    field_name, *options = [part.strip() for part in str(spec).split(",")]
    count = 10
    for option in options:
        key, _, value = option.partition(":")
        if key != "count" or not value.isdigit():
            raise ODataError(f"Invalid facet expression '{spec}' (the stand-in knows count:N only).")
        count = int(value)
    return field_name, count


def _buckets(documents: list[dict[str, Any]], path: str, count: int) -> list[dict[str, Any]]:
    counts: dict[Any, int] = {}
    for document in documents:
        for value in set(values_at(document, path)):
            counts[value] = counts.get(value, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return [{"value": value, "count": number} for value, number in ordered[:count]]


class _Server(ThreadingHTTPServer):
    # The SDK keeps connections alive: closing must not wait for their handler threads.
    daemon_threads = True
    block_on_close = False


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes = b""


@dataclass
class Indexer:
    skillset: str
    index: str
    cache: dict[str, Any] | None = None
    running: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    resets: int = 0


def _result(status: str, start: str, end: str | None) -> dict[str, Any]:
    return {
        "status": status,
        "statusDetail": None,
        "errorMessage": None,
        "startTime": start,
        "endTime": end,
        "itemsProcessed": 0 if end is None else 12,
        "itemsFailed": 0,
        "initialTrackingState": None,
        "finalTrackingState": None,
        "errors": [],
        "warnings": [],
    }


class SearchStub:
    """The stand-in service. `key` is the admin key it accepts, `token` (when given) an Entra ID bearer token it
    accepts too; objects are set up with add_pipeline() or written with PUT."""

    def __init__(self, key: str = "stub-admin-key", service: str = "stub", token: str | None = None) -> None:
        self.key = key
        self.token = token
        self.service = service
        self.indexers: dict[str, Indexer] = {}
        self.skillsets: dict[str, list[str]] = {}
        self.indexes: dict[str, list[dict[str, Any]]] = {}
        # What PUT stored, by collection and name.
        self.definitions: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in COLLECTIONS}
        self.refusals: dict[str, tuple[int, str]] = {}
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SearchStub:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_pipeline(
        self,
        indexer: str = "automl-images-indexer",
        skillset: str = "automl-images-skillset",
        index: str = "automl-images-index",
        skills: tuple[str, ...] = ("classify-images", "shape-image-result"),
        cache: dict[str, Any] | None = None,
    ) -> Indexer:
        self.skillsets[skillset] = list(skills)
        self.indexes.setdefault(index, [])
        self.indexers[indexer] = Indexer(skillset=skillset, index=index, cache=cache)
        return self.indexers[indexer]

    def finish_run(
        self,
        indexer: str = "automl-images-indexer",
        *,
        errors: list[dict[str, Any]] | None = None,
        warnings: list[dict[str, Any]] | None = None,
        processed: int = 12,
    ) -> None:
        """End the run in progress: `success`, or `transientFailure` with per-item `errors` (each as the REST API
        writes one: key, errorMessage, statusCode, name, details, documentationLink) and `warnings` (key, message,
        name, details, documentationLink)."""
        with self.lock:
            found = self.indexers[indexer]
            found.running = False
            result = _result(
                "transientFailure" if errors else "success", found.history[0]["startTime"], "2026-01-01T00:10:00Z"
            )
            result["itemsProcessed"] = processed
            result["itemsFailed"] = len(errors or [])
            result["errors"] = list(errors or [])
            result["warnings"] = list(warnings or [])
            found.history[0] = result

    def add_documents(self, index: str, documents: list[dict[str, Any]]) -> None:
        """Documents an indexer would have written into `index` (each a dict of the index's fields)."""
        with self.lock:
            self.indexes.setdefault(index, []).extend(documents)

    def set_running(self, indexer: str = "automl-images-indexer") -> None:
        with self.lock:
            found = self.indexers[indexer]
            found.running = True
            found.history.insert(0, _result("inProgress", "2026-01-01T00:00:00Z", None))

    def refuse(self, collection: str, status: int, message: str) -> None:
        """Answer every later request to `collection` (datasources, indexes, ...) with `status` and `message`
        in the service's error envelope."""
        self.refusals[collection] = (status, message)

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of every request, in order."""
        return [(r.method, r.path) for r in self.requests]

    # -- the HTTP side -------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json; odata.metadata=minimal; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", "00000000-0000-0000-0000-000000000000")
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                self._answer(status, {"error": {"code": "", "message": message}})

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parsed = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(parsed.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with stub.lock:
                    stub.requests.append(Recorded(method, path, query, dict(self.headers.items()), body, raw))
                    self._dispatch(method, path, query, body)

            def _dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
                bearer = stub.token is not None and self.headers.get("Authorization") == f"Bearer {stub.token}"
                if self.headers.get("api-key") != stub.key and not bearer:
                    # The service answers a missing or wrong key with 403 and no body detail.
                    self._answer(403, {"error": {"code": "", "message": "Authorization failed."}})
                    return
                version = query.get("api-version", "")
                if not version:
                    self._error(400, "The api-version query parameter (?api-version=) is required for all requests.")
                    return
                collection = path.lstrip("/").split("/")[0].split("(")[0]
                if collection in stub.refusals:
                    self._error(*stub.refusals[collection])
                    return
                for verb, pattern, operation in ROUTES:
                    match = pattern.match(path)
                    if verb == method and match:
                        getattr(self, f"_op_{operation}")(*match.groups(), version, body)
                        return
                self._error(404, f"The resource '{path}' does not exist.")

            def _indexer(self, name: str) -> Indexer | None:
                found = stub.indexers.get(name)
                if found is None:
                    self._error(404, NOT_FOUND.format(kind="indexer", name=name, service=stub.service))
                return found

            def _op_status(self, name: str, version: str, body: Any) -> None:
                found = self._indexer(name)
                if found is None:
                    return
                self._answer(
                    200,
                    {
                        "@odata.context": f"{stub.endpoint}/$metadata#{STATUS_TYPE}",
                        "name": name,
                        "status": "running",
                        "lastResult": found.history[0] if found.history else None,
                        "executionHistory": found.history,
                        "limits": LIMITS,
                    },
                )

            def _op_reset(self, name: str, version: str, body: Any) -> None:
                found = self._indexer(name)
                if found is None:
                    return
                found.resets += 1
                self._answer(204)

            def _op_run(self, name: str, version: str, body: Any) -> None:
                found = self._indexer(name)
                if found is None:
                    return
                if found.running:
                    self._error(409, BUSY)
                    return
                found.running = True
                found.history.insert(0, _result("inProgress", "2026-01-01T00:00:00Z", None))
                self._answer(202)

            def _op_put(self, collection: str, name: str, version: str, body: Any) -> None:
                if not isinstance(body, dict) or body.get("name", name) != name:
                    self._error(400, "The request is invalid. Details: the name in the body does not match the URL.")
                    return
                preview = version.endswith("-preview")
                if collection == "indexers" and body.get("cache") is not None and not preview:
                    self._error(400, CACHE_ON_GA)
                    return
                stored = {k: v for k, v in body.items() if not k.startswith("@odata.")}
                known = {"skillsets": stub.skillsets, "indexes": stub.indexes, "indexers": stub.indexers}
                created = name not in stub.definitions[collection] and name not in known.get(collection, {})
                stub.definitions[collection][name] = stored
                if collection == "skillsets":
                    stub.skillsets[name] = [s.get("name") for s in stored.get("skills") or [] if s.get("name")]
                elif collection == "indexes":
                    stub.indexes.setdefault(name, [])
                elif collection == "indexers":
                    indexer = stub.indexers.setdefault(
                        name,
                        Indexer(skillset=stored.get("skillsetName") or "", index=stored.get("targetIndexName") or ""),
                    )
                    indexer.skillset = stored.get("skillsetName") or ""
                    indexer.index = stored.get("targetIndexName") or ""
                    if preview:  # a GA version cannot say anything about the cache: it stays as it was
                        indexer.cache = stored.get("cache")
                    if created and not stored.get("disabled"):
                        indexer.running = True
                        indexer.history.insert(0, _result("inProgress", "2026-01-01T00:00:00Z", None))
                answer = {"@odata.context": f"{stub.endpoint}/$metadata#{collection}/$entity", "@odata.etag": ETAG}
                self._answer(201 if created else 200, {**answer, **stored})

            def _op_get_definition(self, collection: str, name: str, version: str, body: Any) -> None:
                stored = stub.definitions[collection].get(name)
                if stored is None:
                    message = NOT_FOUND.format(kind=KIND[collection], name=name, service=stub.service)
                    self._error(404, message)
                    return
                answer = {"@odata.context": f"{stub.endpoint}/$metadata#{collection}/$entity", "@odata.etag": ETAG}
                self._answer(200, {**answer, **stored})

            def _op_get_indexer(self, name: str, version: str, body: Any) -> None:
                found = self._indexer(name)
                if found is None:
                    return
                stored = stub.definitions["indexers"].get(name)
                if stored is not None:
                    written = {k: v for k, v in stored.items() if k != "cache"}
                    if version.endswith("-preview"):
                        written["cache"] = found.cache
                    context = f"{stub.endpoint}/$metadata#indexers/$entity"
                    self._answer(200, {"@odata.context": context, "@odata.etag": ETAG, **written})
                    return
                definition: dict[str, Any] = {
                    "@odata.context": f"{stub.endpoint}/$metadata#indexers/$entity",
                    "@odata.etag": '"0x8DD0000000000000"',
                    "name": name,
                    "dataSourceName": "automl-images-datasource",
                    "skillsetName": found.skillset,
                    "targetIndexName": found.index,
                    "disabled": None,
                    "schedule": None,
                    "parameters": {"configuration": {"imageAction": "generateNormalizedImages"}},
                    "fieldMappings": [],
                    "outputFieldMappings": [],
                }
                if version.endswith("-preview"):
                    definition["cache"] = found.cache
                self._answer(200, definition)

            def _op_resetskills(self, name: str, version: str, body: Any) -> None:
                if not version.endswith("-preview"):
                    self._error(400, f"This operation is not supported in api-version '{version}'.")
                    return
                skills = stub.skillsets.get(name)
                if skills is None:
                    self._error(404, NOT_FOUND.format(kind="skillset", name=name, service=stub.service))
                    return
                names = body.get("skillNames") if isinstance(body, dict) else None
                if not isinstance(names, list) or any(n not in skills for n in names):
                    self._error(400, f"One or more skills in 'skillNames' do not exist in skillset '{name}'.")
                    return
                self._answer(204)

            def _op_search(self, name: str, version: str, body: Any) -> None:
                docs = stub.indexes.get(name)
                if docs is None:
                    self._error(404, f"The index '{name}' for service '{stub.service}' was not found.")
                    return
                request = dict(body or {})
                schema = stub.definitions["indexes"].get(name)
                fields = {f["name"] for f in schema["fields"]} if schema else None
                try:
                    matching = list(docs)
                    if request.get("filter"):
                        keep = compile_filter(str(request["filter"]), fields)
                        matching = [d for d in matching if keep(d)]
                    select = _names(request.get("select"))
                    order = [_order(o) for o in _names(request.get("orderby"))]
                    facets = [_facet(f) for f in request.get("facets") or []]
                    for field_name in [*select, *(o[0] for o in order), *(f[0].split("/")[0] for f in facets)]:
                        if fields is not None and field_name != "*" and field_name not in fields:
                            raise ODataError(
                                f"Invalid expression: Could not find a property named '{field_name}' on type "
                                "'search.document'."
                            )
                except ODataError as exc:
                    self._error(400, str(exc))
                    return
                for field_name, descending in reversed(order):
                    matching.sort(key=lambda d, f=field_name: (d.get(f) is None, d.get(f)), reverse=descending)
                skip = int(request.get("skip") or 0)
                if skip > 100_000:
                    self._error(400, "Invalid request: $skip cannot be greater than 100000.")
                    return
                top = request.get("top")
                page = 50 if top is None else min(int(top), 1000)
                window = matching[skip : skip + page]
                answer: dict[str, Any] = {}
                if request.get("count"):
                    answer["@odata.count"] = len(matching)
                if facets:
                    answer["@search.facets"] = {path: _buckets(matching, path, count) for path, count in facets}
                answer["value"] = [
                    {"@search.score": 1.0, **{k: v for k, v in d.items() if not select or k in select or "*" in select}}
                    for d in window
                ]
                wanted = len(matching) if top is None else min(int(top), len(matching) - skip)
                if len(window) < wanted:
                    following = {**request, "skip": skip + len(window)}
                    if top is not None:
                        following["top"] = int(top) - len(window)
                    answer["@odata.nextLink"] = (
                        f"{stub.endpoint}/indexes('{name}')/docs/search.post.search?api-version={version}"
                    )
                    answer["@search.nextPageParameters"] = following
                self._answer(200, answer)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler
