"""A local HTTP server that calls the same function entry points as the Functions host (no Core Tools).

`POST /api/classify` goes to `ClassifySkill.main` and `GET /api/health` to `Health.main` (the routes and
methods each function folder's function.json declares), each with an `azure.functions.HttpRequest`, on
werkzeug's threaded WSGI server (one thread per connection). With SKILL_API_KEY set, /api/classify wants the
key as the `x-functions-key` header or the `code` query parameter, as the host's function-level authorization
does; /api/health is anonymous, as deployed. `GET /` is a page to try images on (shared/cli/static/), the dev
server's own: it calls /api/classify like any other client.

In front of the functions it behaves like the host's own front end (Kestrel) where a caller could hurt
it: routes are case-insensitive; the key and the declared length are checked before any body byte is
read (and before `Expect: 100-continue` is answered); a bad `Content-Length` is a 400 and one over
SKILL_MAX_REQUEST_BYTES a 413; chunked bodies are parsed, under the same limit; request heads must
arrive within 30 s and bodies at 240 bytes/s or more after a 5 s grace (Kestrel's RequestHeadersTimeout
and MinRequestBodyDataRate defaults); every refusal is a JSON error, logged with its reason; a
connection whose request was read whole is kept alive; a client that hangs up costs one log line.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import io
import json
import logging
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.client import responses
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from werkzeug.datastructures import EnvironHeaders
from werkzeug.serving import LISTEN_QUEUE, DechunkedInput, ThreadedWSGIServer, WSGIRequestHandler

from shared.core.settings import APP_ROOT, Settings
from shared.skill.contract import error_body

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

REPO_ROOT = APP_ROOT
Main = Callable[[func.HttpRequest], func.HttpResponse]

# Any other method is a 501, as http.server answers a method its handler does not define.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@dataclass(frozen=True)
class Route:
    """One function's HTTP route as its function.json declares it."""

    folder: str
    methods: frozenset[str]
    needs_key: bool


def function_routes(root: Path = REPO_ROOT) -> dict[str, Route]:
    """The routes of the app's function folders, read from each `function.json` the way the Functions host maps
    them (azure-functions-host, WebScriptHostHttpRoutesManager): `/api/<route>` (the folder's name when there
    is no route), lower case; the methods its httpTrigger lists, matched exactly (ASP.NET Core's
    HttpMethodRouteConstraint: HEAD is not GET), every method when it lists none; the function key unless
    `authLevel` is anonymous."""
    routes: dict[str, Route] = {}
    for spec in sorted(root.glob("*/function.json")):
        try:
            bindings = json.loads(spec.read_text(encoding="utf-8")).get("bindings", [])
        except (OSError, ValueError, AttributeError):
            continue
        for binding in bindings:
            if isinstance(binding, dict) and binding.get("type") == "httpTrigger":
                route = str(binding.get("route") or spec.parent.name).strip("/").lower()
                methods = frozenset(str(m).upper() for m in binding.get("methods") or ()) or _METHODS
                needs_key = str(binding.get("authLevel", "function")).lower() != "anonymous"
                routes[f"/api/{route}"] = Route(spec.parent.name, methods, needs_key)
    return routes


ROUTES = function_routes()

# The page to try images (GET / and HEAD /): the dev server's own, not a function; plain files of this package.
PAGE_DIR = Path(__file__).resolve().parent / "static"
PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/page.css": ("page.css", "text/css"),
    "/page.js": ("page.js", "text/javascript"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}
# The page loads its own script and style and talks to this server only (nothing from elsewhere); the
# images it shows are the user's own files (blob: URLs).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _page(path: str) -> func.HttpResponse | None:
    """The page's file at `path`, or None when `path` is not one of them."""
    found = PAGE_FILES.get(path)
    if found is None:
        return None
    name, mimetype = found
    body = (PAGE_DIR / name).read_bytes()
    return func.HttpResponse(body, status_code=200, headers=dict(PAGE_HEADERS), mimetype=mimetype, charset="utf-8")


_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_LINES = 64
# environ keys: the handler's call to make before reading the body, and the flag that the body was read whole
_START_BODY, _BODY_READ = "devserver.start_body", "devserver.body_read"


def _function_main(folder: str) -> Main:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    main: Main = importlib.import_module(folder).main
    return main


class _Refused(Exception):
    """A request answered with an error instead of its function; the exception's text is the error message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _too_large(size: str, limit: int) -> _Refused:
    return _Refused(
        413,
        "PayloadTooLarge",
        f"request body is {size} bytes; the limit is {limit:,} bytes (SKILL_MAX_REQUEST_BYTES); "
        "lower the skillset's batchSize",
    )


class _DeadlineSocket(io.RawIOBase):
    """The connection's read side under a time limit: after `allow(grace_s, per_s)`, reads have grace_s seconds
    plus one second per per_s bytes received (a fixed deadline when per_s is infinite); past it, TimeoutError."""

    def __init__(self, sock: socket.socket, grace_s: float) -> None:
        self.sock = sock
        self.allow(grace_s)

    def allow(self, grace_s: float, per_s: float = float("inf")) -> None:
        self.start, self.grace_s, self.per_s, self.received = time.monotonic(), grace_s, per_s, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.start + self.grace_s + (self.received + 1) / self.per_s - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client sent too slowly")
        self.sock.settimeout(remaining)
        count = self.sock.recv_into(buffer)
        self.received += count
        return count


class _Dechunked(DechunkedInput):
    """werkzeug's reader of a chunked body, also taking the chunk extensions and trailer fields that RFC 9112
    section 7.1 allows (werkzeug reads both as malformed). A malformed body raises _Refused (400)."""

    def __init__(self, rfile: io.BufferedReader[_DeadlineSocket]) -> None:
        super().__init__(rfile)
        self.incoming = rfile

    @staticmethod
    def malformed(detail: str) -> _Refused:
        return _Refused(400, "InvalidRequest", f"chunked request body is malformed: {detail}")

    def read_chunk_len(self) -> int:
        line = self.incoming.readline(_MAX_CHUNK_LINE)
        size = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not line.endswith(b"\n") or not size or size.strip(b"0123456789abcdefABCDEF"):
            raise self.malformed("bad chunk size line")
        if int(size, 16) == 0:
            # Skip the trailer fields; werkzeug reads the blank line that ends them as the last chunk's end.
            for _ in range(_MAX_TRAILER_LINES):
                if self.incoming.peek(1)[:1] in (b"\r", b"\n", b""):
                    break
                self.incoming.readline(_MAX_CHUNK_LINE)
            else:
                raise self.malformed("bad trailer section")
        return int(size, 16)

    def readinto(self, buf: Any) -> int:
        try:
            return super().readinto(buf)
        except OSError as exc:
            if type(exc) is not OSError or exc.errno is not None:
                raise  # the connection failed; werkzeug raises a bare OSError for the body's framing
            raise self.malformed("a chunk's data does not end where its size says") from None


def _declared_length(environ: WSGIEnvironment) -> int | None:
    """The body's length from Content-Length, None for chunked; _Refused for a framing that is bad or refused."""
    codings: str | None = environ.get("HTTP_TRANSFER_ENCODING")
    if codings is not None:
        if [c.strip().lower() for c in codings.split(",")] != ["chunked"]:
            message = f"Transfer-Encoding {codings[:100]!r} is not supported; send Content-Length or chunked"
            raise _Refused(400, "InvalidRequest", message)
        return None  # RFC 9112 6.3: Transfer-Encoding overrides Content-Length
    raw: str = environ.get("CONTENT_LENGTH", "0")
    if not (raw.strip().isdigit() and raw.isascii()):
        raise _Refused(400, "InvalidRequest", f"Content-Length must be one non-negative integer, got {raw[:100]!r}")
    return int(raw)


class _Handler(WSGIRequestHandler):
    """werkzeug's request handler plus what it does not do: time limits on request heads and bodies, 100
    Continue only once the application asks for the body, keep-alive, JSON for http.server's own refusals."""

    server: SkillServer
    protocol_version = "HTTP/1.1"
    # Buffered writes send an answer's head and body together, and without Nagle's algorithm at once:
    # in two sends they cost about 40 ms per keep-alive request (delayed ACK).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.reader = _DeadlineSocket(self.connection, self.server.headers_timeout_s)
        self.rfile = self.incoming = io.BufferedReader(self.reader, 1 << 16)
        self.dropped = False

    def handle_one_request(self) -> None:
        self.reader.allow(self.server.headers_timeout_s)
        self.continue_expected = False
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        self.continue_expected = True  # answered by start_body, after the application's checks
        return True

    def run_wsgi(self) -> None:
        del self.headers["Expect"]  # or werkzeug answers 100 Continue before the application runs
        rfile = self.rfile
        try:
            super().run_wsgi()
        finally:
            self.rfile = rfile

    def make_environ(self) -> WSGIEnvironment:
        environ = super().make_environ()
        lengths = self.headers.get_all("Content-Length") or []
        if len({v.strip() for v in lengths}) > 1:  # werkzeug keeps the last; the body's end is unknown
            environ["CONTENT_LENGTH"] = ", ".join(lengths)
        if environ.get("wsgi.input_terminated"):
            environ["wsgi.input"] = _Dechunked(self.incoming)
        environ[_START_BODY] = self.start_body
        return environ

    def start_body(self) -> None:
        """The application's call once the request passed its checks, before it reads the body: answer
        `Expect: 100-continue` and start the body's rate limit."""
        if self.continue_expected:
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
            self.wfile.flush()
        self.reader.allow(self.server.body_grace_s, self.server.min_body_bytes_per_s)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection":  # once per answer, from werkzeug's run_wsgi or send_error
            self.connection.settimeout(self.server.write_timeout_s)
            environ = getattr(self, "environ", {})
            unread = "HTTP_TRANSFER_ENCODING" in environ or environ.get("CONTENT_LENGTH", "0").strip() != "0"
            if not self.close_connection and (environ.get(_BODY_READ) or not unread):
                # werkzeug closes every connection, after reading the socket dry so that a client still
                # sending sees the answer rather than a reset. This request was read whole: keep the
                # connection, and give that drain nothing to read, or it would eat the next request.
                self.rfile = io.BytesIO()
                return
            self.reader.allow(self.server.drain_max_s)
        super().send_header(keyword, value)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, oversized headers): JSON, and the connection closed."""
        status = HTTPStatus(code)
        text = message or status.phrase
        logger.warning("refused %s from %s: %d %s", self.command or "request", self.client_address[0], code, text)
        body = error_body(status.phrase.replace(" ", ""), text)
        self.close_connection = True
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug('%s "%s" %s', self.address_string(), self.requestline, code)

    def log(self, type: str, message: str, *args: Any) -> None:
        # werkzeug's log (its own logger, at INFO or ERROR); what still comes here is http.server's line for a
        # client too slow with its request head.
        logger.info("%s " + message, self.address_string(), *args)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the client is gone: the rest of an answer has nowhere to go
            super().finish()

    def connection_dropped(self, error: BaseException, environ: WSGIEnvironment | None = None) -> None:
        # werkzeug can report one loss twice: for the answer, then for http.server's flush of what is left.
        if not self.dropped:
            logger.info("connection from %s ended: %s", self.client_address[0], error.__class__.__name__)
        self.dropped = self.close_connection = True


class SkillServer(ThreadedWSGIServer):
    """werkzeug's threaded server running `answer`, the WSGI application."""

    # Kestrel's RequestHeadersTimeout and MinRequestBodyDataRate defaults (attributes, so a test can shorten them).
    headers_timeout_s = 30.0
    body_grace_s = 5.0
    min_body_bytes_per_s = 240.0
    write_timeout_s = 30.0
    # How long werkzeug may read and discard after an answer that closes the connection, so that a client
    # still sending a body that was not read gets the answer instead of a reset (a lingering close).
    drain_max_s = 5.0

    def __init__(self, sock: socket.socket, settings: Settings) -> None:
        self.settings = settings
        self.mains = {path: _function_main(route.folder) for path, route in ROUTES.items()}
        host, port = sock.getsockname()[:2]
        super().__init__(host, port, self.answer, _Handler, fd=sock.fileno())

    def answer(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        """The function's answer, or a JSON error logged with its reason; always with a Content-Length."""
        method: str = environ["REQUEST_METHOD"]
        path = urlsplit(environ["REQUEST_URI"]).path
        try:
            response = self._call(environ, method, path)
            status, body, headers = response.status_code, response.get_body(), list(response.headers.items())
            if response.mimetype and not any(k.lower() == "content-type" for k, _ in headers):
                # As the host does: the response's mimetype and charset are its Content-Type.
                headers.append(("Content-Type", f"{response.mimetype}; charset={response.charset or 'utf-8'}"))
        except _Refused as refusal:
            logger.warning("refused %s %s: %d %s: %s", method, path, refusal.status, refusal.code, refusal)
            status, body, headers = refusal.status, error_body(refusal.code, str(refusal)), []
        except Exception:  # a bug of ours in a function: JSON like every other answer, the traceback in the log
            incident = uuid.uuid4().hex[:12]
            logger.exception("dev server failed answering %s %s (incident %s)", method, path, incident)
            status, body, headers = 500, error_body("InternalError", f"internal error (incident {incident})"), []
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "application/json"))
        start_response(f"{status} {responses.get(status, '')}", [*headers, ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]

    def _call(self, environ: WSGIEnvironment, method: str, path: str) -> func.HttpResponse:
        route_key = path.rstrip("/").lower()
        route = ROUTES.get(route_key)
        if method not in _METHODS:
            raise _Refused(501, "NotImplemented", f"Unsupported method ({method!r})")
        if method in ("GET", "HEAD") and (page := _page(path)) is not None:
            return page
        if route is None:
            raise _Refused(404, "NotFound", f"no function at {path}; try POST /api/classify or GET /api/health")
        needs_key = route.needs_key
        if method not in route.methods:
            # The Functions host's router answers 404, not 405, for a known route and a method its function.json
            # does not list (Azure/azure-functions-host#10098, #11625); we do too, with a message saying why.
            takes = " and ".join(sorted(route.methods))
            raise _Refused(404, "NotFound", f"{path} answers {takes} only, not {method}")
        params = dict(parse_qsl(environ["QUERY_STRING"], keep_blank_values=True))
        length = _declared_length(environ)
        key, code = self.settings.api_key, params.pop("code", "")
        given = environ.get("HTTP_X_FUNCTIONS_KEY") or code
        if needs_key and key is not None and not hmac.compare_digest(given.encode(), key.encode()):
            message = "missing or wrong function key: send it as the x-functions-key header or the code query parameter"
            raise _Refused(401, "Unauthorized", message)
        request = func.HttpRequest(
            method=method,
            url=f"http://{environ.get('HTTP_HOST', 'localhost')}{environ['REQUEST_URI']}",
            headers=dict(EnvironHeaders(environ).items()),
            params=params,
            body=self._read_body(environ, length),
        )
        response = self.mains[route_key](request)
        if response.status_code >= 400:
            logger.warning("answered %s %s: %d", method, route_key, response.status_code)
        return response

    def _read_body(self, environ: WSGIEnvironment, length: int | None) -> bytes:
        limit = self.settings.max_request_bytes
        if length is not None and length > limit:
            raise _too_large(f"{length:,}", limit)
        if length == 0:
            return b""
        environ[_START_BODY]()
        try:
            if length is None:
                parts, total = [], 0
                while piece := environ["wsgi.input"].read(1 << 16):
                    total += len(piece)
                    if total > limit:
                        raise _too_large(f"over {limit:,}", limit)
                    parts.append(piece)
                body = b"".join(parts)
            else:
                body = environ["wsgi.input"].read(length)
                if len(body) < length:
                    raise _Refused(400, "InvalidRequest", f"request body ended after {len(body):,} of {length:,} bytes")
        except TimeoutError:
            rate, grace = self.min_body_bytes_per_s, self.body_grace_s
            message = (
                f"request body arrived too slowly (under {rate:g} bytes/s after {grace:g} s); the connection is closed"
            )
            raise _Refused(408, "RequestTimeout", message) from None
        environ[_BODY_READ] = True
        return body


def answers(server: SkillServer, timeout_s: float = 60.0) -> bool:
    """True once `server` answers one `GET /api/health` over a fresh connection (any status: it is serving);
    False when it does not within `timeout_s` (then `serve` prints no ready line). Call it while another
    thread runs `serve_forever`."""
    import http.client

    host, port = server.server_address[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(host), str(host))
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        connection.request("GET", "/api/health", headers={"Connection": "close"})
        connection.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return True


def make_server(settings: Settings, host: str = "127.0.0.1", port: int = 7071) -> SkillServer:
    """Bind (port 0 picks a free one; `server.server_address` tells which). Raises OSError when the address
    cannot be bound and OverflowError for a port outside 0-65535."""
    # Bound here and handed to werkzeug as a descriptor: werkzeug's own bind prints the error and exits.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_QUEUE)
        return SkillServer(sock, settings)
