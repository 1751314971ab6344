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
- `POST /indexes('{name}')/docs/search.post.search` with `count: true` and the one filter shape
  `images/any(i: i/modelVersion ne null and i/modelVersion ne '<v>')`: `@odata.count` of matching documents;
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

FILTER = re.compile(r"^images/any\(i: i/modelVersion ne null and i/modelVersion ne '((?:[^']|'')*)'\)$")
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
        self.definitions["indexes"].setdefault(
            index, {"name": index, "fields": [{"name": "id", "type": "Edm.String", "key": True}]}
        )
        self.indexers[indexer] = Indexer(skillset=skillset, index=index, cache=cache)
        return self.indexers[indexer]

    def finish_run(self, indexer: str = "automl-images-indexer", end: str = "2026-01-01T00:10:00Z") -> None:
        """The run in progress ends with success at `end` (UTC, "%Y-%m-%dT%H:%M:%SZ")."""
        with self.lock:
            found = self.indexers[indexer]
            found.running = False
            found.history[0] = _result("success", found.history[0]["startTime"], end)

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
                if (body or {}).get("vectorQueries"):
                    self._vector_search(docs, body)
                    return
                wanted = FILTER.match(str((body or {}).get("filter", "")))
                if wanted is None:
                    self._error(400, "Invalid expression: the stand-in supports only the modelVersion filter.")
                    return
                other = wanted.group(1).replace("''", "'")
                count = sum(
                    1
                    for doc in docs
                    if any(i.get("modelVersion") is not None and i.get("modelVersion") != other for i in doc["images"])
                )
                answer: dict[str, Any] = {"value": []}
                if (body or {}).get("count"):
                    answer["@odata.count"] = count
                self._answer(200, answer)

            def _vector_search(self, docs: list[dict[str, Any]], body: dict[str, Any]) -> None:
                """One `kind: vector` query on one field: exhaustive cosine over the documents that have the field,
                `@search.score` = 1 / (1 + (1 - cosine)) (Learn, "Relevance in vector search"), best `k` first,
                then `top`; the vector itself is not returned (the field is not retrievable)."""
                (query,) = body["vectorQueries"]
                if query.get("kind") != "vector" or not isinstance(query.get("vector"), list):
                    self._error(400, "The stand-in supports one vector query of kind 'vector'.")
                    return
                field = query.get("fields")
                vector = [float(x) for x in query["vector"]]
                scored = []
                for doc in docs:
                    stored = doc.get(field)
                    if not isinstance(stored, list):
                        continue
                    if len(stored) != len(vector):
                        self._error(
                            400,
                            f"The vector field '{field}' dimensions must match the length of the vector in the query: "
                            f"expected {len(stored)}, got {len(vector)}.",
                        )
                        return
                    dot = sum(a * b for a, b in zip(stored, vector, strict=True))
                    norms = (sum(a * a for a in stored) * sum(b * b for b in vector)) ** 0.5 or 1.0
                    scored.append((1.0 / (2.0 - dot / norms), doc))
                scored.sort(key=lambda pair: -pair[0])
                limit = min(int(query.get("k") or 50), int(body.get("top") or 50))
                hits = [
                    {"@search.score": score, **{k: v for k, v in doc.items() if k != field}}
                    for score, doc in scored[:limit]
                ]
                self._answer(200, {"value": hits})

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler
