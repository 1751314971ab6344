"""A local HTTP server that calls the same function entry points as the Functions host (no Core Tools).

`POST /api/classify` goes to `ClassifySkill.main` and `GET /api/health` to `Health.main`, each with an
`azure.functions.HttpRequest`, one thread per connection. With SKILL_API_KEY set, /api/classify wants
the key as the `x-functions-key` header or the `code` query parameter, as the host's function-level
authorization does; /api/health is anonymous, as deployed.

In front of the functions it behaves like the host's own front end (Kestrel) where a caller could hurt
it: routes are case-insensitive; the key and the declared length are checked before any body byte is
read; a bad `Content-Length` is a 400 and one over SKILL_MAX_REQUEST_BYTES a 413; chunked bodies are
parsed, under the same limit; request heads must arrive within 30 s and bodies at 240 bytes/s or more
after a 5 s grace (Kestrel's RequestHeadersTimeout and MinRequestBodyDataRate defaults); every refusal
is a JSON error, logged with its reason; a client that hangs up costs one log line, not a traceback.
"""

from __future__ import annotations

import hmac
import importlib
import io
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from shared.core.errors import SettingsError
from shared.core.settings import APP_ROOT, Settings
from shared.skill.contract import error_body

logger = logging.getLogger(__name__)

REPO_ROOT = APP_ROOT
LOCAL_SETTINGS = REPO_ROOT / "local.settings.json"
Main = Callable[[func.HttpRequest], func.HttpResponse]

# route (lower case) -> (method, function folder, needs the function key)
ROUTES = {
    "/api/classify": ("POST", "ClassifySkill", True),
    "/api/extraction": ("POST", "ExtractionSkill", True),  # the older PowerSkill's route, same service
    "/api/health": ("GET", "Health", False),
}

HEADERS_TIMEOUT_S = 30.0
MIN_BODY_BYTES_PER_S = 240.0
BODY_GRACE_S = 5.0
WRITE_TIMEOUT_S = 30.0
# After refusing a request whose body was not read, read and discard at most this much (for this long) so
# the client, still sending, gets our answer instead of a connection reset (what servers call lingering close).
DRAIN_MAX_BYTES = 16 << 20
DRAIN_MAX_S = 5.0
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_LINES = 64


def load_local_settings(path: Path, environ: MutableMapping[str, str]) -> list[str]:
    """Copy the `Values` of a local.settings.json into `environ` as `func start` does: a name already in
    the environment keeps its value. Returns the names set. A missing file sets nothing; SettingsError
    for a file that is not JSON, encrypted, or has no `Values` object."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"{path} is not valid JSON ({exc}); fix it or remove it") from None
    if not isinstance(document, dict) or not isinstance(document.get("Values", {}), dict):
        raise SettingsError(f'{path} must be a JSON object with a "Values" object of setting names and values')
    if document.get("IsEncrypted") is True:
        raise SettingsError(f"{path} is encrypted (IsEncrypted: true); run `func settings decrypt` first")
    applied = []
    for name, value in (document.get("Values") or {}).items():
        if name in environ or value is None:
            continue
        environ[name] = value if isinstance(value, str) else json.dumps(value)
        applied.append(name)
    return applied


def _function_main(folder: str) -> Main:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    main: Main = importlib.import_module(folder).main
    return main


class _Refused(Exception):
    """A request answered with an error before (or while) its body was read."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        drain: int = 0,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.drain, self.close, self.headers = drain, close or drain > 0, dict(headers or {})


class _DeadlineSocket(io.RawIOBase):
    """The connection's read side with a deadline (request heads) or a minimum data rate (bodies)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: float | None = None
        self.rate: tuple[float, float, float] | None = None  # (start, grace_s, bytes per second)
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        limit = self.deadline
        if self.rate is not None:
            start, grace, per_s = self.rate
            limit = start + grace + (self.received + 1) / per_s
        if limit is not None:
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the client sent too slowly")
            self.sock.settimeout(remaining)
        count = self.sock.recv_into(buffer)
        self.received += count
        return count


class SkillServer(ThreadingHTTPServer):
    daemon_threads = True
    headers_timeout_s = HEADERS_TIMEOUT_S
    min_body_bytes_per_s = MIN_BODY_BYTES_PER_S
    body_grace_s = BODY_GRACE_S

    def __init__(self, address: tuple[str, int], settings: Settings) -> None:
        super().__init__(address, _Handler)
        self.settings = settings
        self.mains = {route: _function_main(folder) for route, (_, folder, _) in ROUTES.items()}

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client hung up or stalled: its problem, one line is enough
            logger.info("connection from %s ended: %s", client_address[0], error.__class__.__name__)
        else:
            logger.exception("dev server failed serving %s", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: SkillServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # One send per response and no Nagle delay: headers and body in two sends without TCP_NODELAY
        # cost about 40 ms per keep-alive request (delayed ACK).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = _DeadlineSocket(self.connection)
        self.rfile = io.BufferedReader(self.reader, 1 << 16)

    def handle_one_request(self) -> None:
        self.reader.deadline = time.monotonic() + self.server.headers_timeout_s
        self.reader.rate = None
        self.continue_expected = False
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as exc:
            logger.info("connection from %s ended: %s", self.client_address[0], exc.__class__.__name__)
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        # Answer "100 Continue" only once the key and the length have been checked (see _read_body).
        self.continue_expected = True
        return True

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def log_error(self, format: str, *args: object) -> None:
        logger.info("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        sent = {k.lower() for k in (headers or {})}
        for key, value in (headers or {}).items():
            if key.lower() not in ("content-length", "connection"):
                self.send_header(key, value)
        if "content-type" not in sent:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        head: list[bytes] = getattr(self, "_headers_buffer", [])
        payload = b"".join(head) + b"\r\n" + (b"" if self.command == "HEAD" else body)
        head.clear()
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.wfile.write(payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the standard library raises itself (bad request line, unknown method, huge headers): JSON."""
        status = HTTPStatus(code)
        self.close_connection = True
        text = message or status.phrase
        logger.warning("refused %s from %s: %d %s", self.command or "request", self.client_address[0], code, text)
        self._send(code, error_body(status.phrase.replace(" ", ""), text))

    def _refuse(self, refusal: _Refused, route: str) -> None:
        logger.warning("refused %s %s: %d %s: %s", self.command, route, refusal.status, refusal.code, refusal.message)
        if refusal.close:
            self.close_connection = True
        self._send(refusal.status, error_body(refusal.code, refusal.message), refusal.headers)
        if refusal.drain:
            self._drain(refusal.drain)

    def _drain(self, declared: int) -> None:
        self.reader.rate = None
        self.reader.deadline = time.monotonic() + DRAIN_MAX_S
        remaining = min(declared, DRAIN_MAX_BYTES)
        try:
            while remaining > 0:
                chunk = self.rfile.read1(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _unread(self) -> int:
        """How much body may follow the head, for draining after a refusal (0 when none was announced)."""
        if self.headers.get("Transfer-Encoding"):
            return DRAIN_MAX_BYTES
        raw = (self.headers.get("Content-Length") or "0").strip()
        return min(int(raw), DRAIN_MAX_BYTES) if raw.isdigit() and raw.isascii() else DRAIN_MAX_BYTES

    def _declared_length(self) -> int | None:
        """The body's length from Content-Length, None for chunked; _Refused for a bad or refused framing."""
        codings = self.headers.get_all("Transfer-Encoding") or []
        if codings:
            if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
                raise _Refused(
                    400,
                    "InvalidRequest",
                    f"Transfer-Encoding {', '.join(codings)[:100]!r} is not supported; send Content-Length or chunked",
                    drain=DRAIN_MAX_BYTES,
                )
            return None  # RFC 9112 6.3: Transfer-Encoding overrides Content-Length
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        raw = values.pop()
        if values or not raw.isdigit() or not raw.isascii():
            given = ", ".join(self.headers.get_all("Content-Length") or [])[:100]
            raise _Refused(
                400,
                "InvalidRequest",
                f"Content-Length must be one non-negative integer, got {given!r}",
                close=True,  # the body's end is unknown: nothing more on this connection can be trusted
            )
        return int(raw)

    def _too_large(self, size: str, unread: int) -> _Refused:
        limit = self.server.settings.max_request_bytes
        return _Refused(
            413,
            "PayloadTooLarge",
            f"request body is {size} bytes; the limit is {limit:,} bytes (SKILL_MAX_REQUEST_BYTES); "
            "lower the skillset's batchSize",
            drain=unread,
        )

    def _read_body(self, length: int | None) -> bytes:
        limit = self.server.settings.max_request_bytes
        if length is not None and length > limit:
            raise self._too_large(f"{length:,}", length)
        if self.continue_expected:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.reader.deadline = None
        self.reader.received = 0
        self.reader.rate = (time.monotonic(), self.server.body_grace_s, self.server.min_body_bytes_per_s)
        try:
            if length is not None:
                body = self.rfile.read(length) if length else b""
                if len(body) < length:
                    raise _Refused(
                        400,
                        "InvalidRequest",
                        f"request body ended after {len(body):,} of {length:,} bytes",
                        close=True,
                    )
                return body
            return self._read_chunked(limit)
        except TimeoutError:
            raise _Refused(
                408,
                "RequestTimeout",
                f"request body arrived too slowly (under {self.server.min_body_bytes_per_s:g} bytes/s after "
                f"{self.server.body_grace_s:g} s); the connection is closed",
                close=True,
            ) from None
        finally:
            self.reader.rate = None

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE)
            size_text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                raise _Refused(
                    400, "InvalidRequest", "chunked request body is malformed: bad chunk size line", close=True
                )
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise self._too_large(f"over {limit:,}", min(total - limit, DRAIN_MAX_BYTES))
            data = self.rfile.read(size)
            if len(data) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _Refused(
                    400,
                    "InvalidRequest",
                    "chunked request body is malformed: a chunk's data does not end where its size says",
                    close=True,
                )
            parts.append(data)
        for _ in range(_MAX_TRAILER_LINES):
            trailer = self.rfile.readline(_MAX_CHUNK_LINE)
            if trailer in (b"\r\n", b"\n"):
                return b"".join(parts)
            if not trailer.endswith(b"\n"):
                break
        raise _Refused(400, "InvalidRequest", "chunked request body is malformed: bad trailer section", close=True)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        route_key = url.path.rstrip("/").lower()
        try:
            self._dispatch_route(url.query, route_key)
        except _Refused as refusal:
            self._refuse(refusal, url.path)

    def _dispatch_route(self, query: str, route_key: str) -> None:
        method = self.command
        route = ROUTES.get(route_key)
        if route is None:
            raise _Refused(
                404,
                "NotFound",
                f"no function at {urlsplit(self.path).path}; try POST /api/classify or GET /api/health",
                drain=self._unread(),
            )
        want_method, _, needs_key = route
        if method != want_method:
            # The Functions host's router answers 404, not 405, for a known route and a method its function.json
            # does not list (Azure/azure-functions-host#10098, #11625); we do too, with a message saying why.
            raise _Refused(
                404,
                "NotFound",
                f"{urlsplit(self.path).path} answers {want_method} only, not {method}",
                drain=self._unread(),
            )
        params = dict(parse_qsl(query, keep_blank_values=True))
        length = self._declared_length()
        key = self.server.settings.api_key
        if needs_key and key is not None:
            given = self.headers.get("x-functions-key") or params.get("code") or ""
            if not hmac.compare_digest(given.encode(), key.encode()):
                raise _Refused(
                    401,
                    "Unauthorized",
                    "missing or wrong function key: send it as the x-functions-key header or the code query parameter",
                    drain=self._unread(),
                )
        body = self._read_body(length)
        params.pop("code", None)
        request = func.HttpRequest(
            method=method,
            url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
            headers=dict(self.headers.items()),
            params=params,
            body=body,
        )
        response = self.server.mains[route_key](request)
        if response.status_code >= 400:
            logger.warning("answered %s %s: %d", method, route_key, response.status_code)
        self._send(response.status_code, response.get_body(), dict(response.headers.items()))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


def make_server(settings: Settings, host: str = "127.0.0.1", port: int = 7071) -> SkillServer:
    """Bind (port 0 picks a free one; `server.server_address` tells which). Raises OSError when the address
    cannot be bound and OverflowError for a port outside 0-65535."""
    return SkillServer((host, port), settings)
