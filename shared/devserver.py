"""A local HTTP server that calls the same function entry points as the Functions host (no Core Tools).

`POST /api/classify` goes to `ClassifySkill.main` and `GET /api/health` to `Health.main`, each with an
`azure.functions.HttpRequest`, one thread per connection. With SKILL_API_KEY set, /api/classify wants
the key as the `x-functions-key` header or the `code` query parameter, as the host's function-level
authorization does; /api/health is anonymous, as deployed.
"""

from __future__ import annotations

import hmac
import importlib
import logging
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from shared.contract import error_body
from shared.settings import Settings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
Main = Callable[[func.HttpRequest], func.HttpResponse]

# route -> (method, function folder, needs the function key)
ROUTES = {
    "/api/classify": ("POST", "ClassifySkill", True),
    "/api/extraction": ("POST", "ExtractionSkill", True),  # the older PowerSkill's route, same service
    "/api/health": ("GET", "Health", False),
}


def _function_main(folder: str) -> Main:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    main: Main = importlib.import_module(folder).main
    return main


class SkillServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], settings: Settings) -> None:
        super().__init__(address, _Handler)
        self.settings = settings
        self.mains = {route: _function_main(folder) for route, (_, folder, _) in ROUTES.items()}


class _Handler(BaseHTTPRequestHandler):
    server: SkillServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        sent = {k.lower() for k in (headers or {})}
        for key, value in (headers or {}).items():
            if key.lower() != "content-length":
                self.send_header(key, value)
        if "content-type" not in sent:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, error_body(code, message))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        route = ROUTES.get(url.path.rstrip("/"))
        if route is None:
            self._error(404, "NotFound", f"no function at {url.path}; try POST /api/classify or GET /api/health")
            return
        want_method, _, needs_key = route
        if method != want_method:
            self._error(405, "MethodNotAllowed", f"{url.path} accepts {want_method}")
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        length_header = self.headers.get("Content-Length") or "0"
        try:
            length = int(length_header)
        except ValueError:
            self._error(400, "InvalidRequest", "Content-Length is not a number")
            return
        limit = self.server.settings.max_request_bytes
        if length > limit:
            self.close_connection = True
            # Drain a moderately oversized body so the client reads our 413 instead of a broken pipe.
            if length <= 4 * limit:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            self._error(
                413,
                "PayloadTooLarge",
                f"request body is {length:,} bytes; the limit is {limit:,} bytes (SKILL_MAX_REQUEST_BYTES); "
                "lower the skillset's batchSize",
            )
            return
        body = self.rfile.read(length) if length else b""
        key = self.server.settings.api_key
        if needs_key and key is not None:
            given = self.headers.get("x-functions-key") or params.get("code") or ""
            if not hmac.compare_digest(given.encode(), key.encode()):
                self._error(
                    401,
                    "Unauthorized",
                    "missing or wrong function key: send it as the x-functions-key header or the code query parameter",
                )
                return
        params.pop("code", None)
        request = func.HttpRequest(
            method=method,
            url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
            headers=dict(self.headers.items()),
            params=params,
            body=body,
        )
        response = self.server.mains[url.path.rstrip("/")](request)
        self._send(response.status_code, response.get_body(), dict(response.headers.items()))

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")


def make_server(settings: Settings, host: str = "127.0.0.1", port: int = 7071) -> SkillServer:
    """Bind (port 0 picks a free one; `server.server_address` tells which)."""
    return SkillServer((host, port), settings)
