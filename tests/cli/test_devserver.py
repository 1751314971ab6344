"""The dev server over real HTTP on loopback: same functions, the host's key check, concurrent requests."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared import cli
from shared.cli.devserver import SkillServer, make_server
from shared.core.settings import Settings
from shared.skill import service as app
from tests.conftest import ROOT, SAMPLES
from tests.modelfactory import tiny_bundle

pytestmark = pytest.mark.integration  # see tests/conftest.py

KEY = "test-key-not-a-secret"
BODY = json.dumps(
    {"values": [{"recordId": "1", "data": {"image": base64.b64encode((SAMPLES / "coffee.png").read_bytes()).decode()}}]}
).encode()


@pytest.fixture
def server(install_service: Any) -> Iterator[str]:
    settings = Settings(api_key=KEY, max_request_bytes=5_000_000)
    install_service(api_key=KEY, max_request_bytes=5_000_000)
    httpd: SkillServer = make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host!s}:{port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def fetch(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def test_classify_with_the_key_in_the_header_or_the_code_parameter(server: str) -> None:
    status, payload, headers = fetch(f"{server}/api/classify", BODY, {"x-functions-key": KEY})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert payload["values"][0]["data"]["label"] == "espresso"
    status, payload, _ = fetch(f"{server}/api/classify?code={KEY}&topK=2", BODY)
    assert status == 200 and len(payload["values"][0]["data"]["predictions"]) == 2


@pytest.mark.parametrize("headers", [{}, {"x-functions-key": "wrong"}])
def test_classify_without_the_right_key_is_401(server: str, headers: dict[str, str]) -> None:
    status, payload, _ = fetch(f"{server}/api/classify", BODY, headers)
    assert (status, payload) == (
        401,
        {
            "error": {
                "code": "Unauthorized",
                "message": "missing or wrong function key: send it as the x-functions-key header or the code query "
                "parameter",
            }
        },
    )


def test_health_is_anonymous(server: str) -> None:
    status, payload, _ = fetch(f"{server}/api/health")
    assert status == 200 and payload["model"]["version"] == "sample-efficientnet-lite0-imagenet"


def test_a_function_that_raises_is_a_json_500_without_the_traceback(
    install_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    install_service()
    httpd = make_server(Settings(), "127.0.0.1", 0)

    def broken(request: Any) -> Any:
        raise RuntimeError("secret detail")

    httpd.mains["/api/health"] = broken
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        status, payload, headers = fetch(f"http://{host!s}:{port}/api/health")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert payload["error"]["code"] == "InternalError"
    assert payload["error"]["message"].startswith("internal error (incident ")
    assert "secret detail" in caplog.text and "secret detail" not in json.dumps(payload)


def test_unknown_route_and_wrong_method(server: str) -> None:
    assert fetch(f"{server}/api/nope")[:2] == (
        404,
        {
            "error": {
                "code": "NotFound",
                "message": "no function at /api/nope; try POST /api/classify or GET /api/health",
            }
        },
    )
    assert fetch(f"{server}/api/classify")[:2] == (
        404,
        {"error": {"code": "NotFound", "message": "/api/classify answers POST only, not GET"}},
    )


def test_bad_envelope_over_http(server: str) -> None:
    status, payload, _ = fetch(f"{server}/api/classify", b"{", {"x-functions-key": KEY})
    assert status == 400 and payload["error"]["code"] == "InvalidRequest"


def test_body_over_the_limit_is_413_before_reading_it(server: str) -> None:
    status, payload, _ = fetch(f"{server}/api/classify", b" " * 5_000_001, {"x-functions-key": KEY})
    assert status == 413
    assert payload["error"]["message"] == (
        "request body is 5,000,001 bytes; the limit is 5,000,000 bytes (SKILL_MAX_REQUEST_BYTES); "
        "lower the skillset's batchSize"
    )


def test_concurrent_requests_are_all_answered(server: str) -> None:
    def one(_: int) -> tuple[int, str]:
        status, payload, _ = fetch(f"{server}/api/classify", BODY, {"x-functions-key": KEY})
        return status, payload["values"][0]["data"]["label"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(12)))
    assert results == [(200, "espresso")] * 12


def raw_exchange(
    server: str, data: bytes, *, then: bytes = b"", timeout: float = 20.0
) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes, read one response (status, headers, JSON body or None)."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(data)
        if then:
            conn.sendall(then)
        reader = conn.makefile("rb")
        status_line = reader.readline().decode()
        while status_line.startswith("HTTP/1.1 100"):
            reader.readline()
            status_line = reader.readline().decode()
        headers: dict[str, str] = {}
        for line in iter(reader.readline, b"\r\n"):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = reader.read(length) if length else b""
        return int(status_line.split()[1]), headers, json.loads(body) if body else None


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("length", "message"),
    [
        ("-1", "Content-Length must be one non-negative integer, got '-1'"),
        ("12abc", "Content-Length must be one non-negative integer, got '12abc'"),
        ("+5", "Content-Length must be one non-negative integer, got '+5'"),
    ],
)
def test_a_bad_content_length_is_400_without_reading_a_body(server: str, length: str, message: str) -> None:
    # Nothing follows the head: a server that read "to EOF" would hang here instead of answering.
    status, headers, payload = raw_exchange(
        server, head("POST", "/api/classify", {"x-functions-key": KEY, "Content-Length": length})
    )
    assert (status, payload) == (400, {"error": {"code": "InvalidRequest", "message": message}})
    assert headers["connection"] == "close"


def test_over_the_limit_and_wrong_key_are_answered_before_any_body_byte(server: str) -> None:
    status, _, payload = raw_exchange(
        server, head("POST", "/api/classify", {"x-functions-key": KEY, "Content-Length": "90000000"})
    )
    assert status == 413 and payload["error"]["message"].startswith("request body is 90,000,000 bytes; the limit")
    status, headers, payload = raw_exchange(
        server, head("POST", "/api/classify", {"x-functions-key": "wrong", "Content-Length": "4000000"})
    )
    assert status == 401 and payload["error"]["code"] == "Unauthorized" and headers["connection"] == "close"


def test_expect_100_continue_is_sent_only_after_the_checks(server: str) -> None:
    status, _, _ = raw_exchange(
        server,
        head("POST", "/api/classify", {"Content-Length": str(len(BODY)), "Expect": "100-continue"}),
    )
    assert status == 401  # refused without inviting the body
    status, _, payload = raw_exchange(
        server,
        head(
            "POST",
            "/api/classify",
            {"x-functions-key": KEY, "Content-Length": str(len(BODY)), "Expect": "100-continue"},
        ),
        then=BODY,
    )
    assert status == 200 and payload["values"][0]["data"]["label"] == "espresso"


def test_expect_100_continue_is_answered_once(server: str) -> None:
    # http.server and werkzeug each answer it on their own; exactly one interim answer may reach the client.
    host, port = server.removeprefix("http://").split(":")
    request = head(
        "POST", "/api/classify", {"x-functions-key": KEY, "Content-Length": str(len(BODY)), "Expect": "100-continue"}
    )
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(request)
        assert conn.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(BODY)
        assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")


def chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [
        f"{len(body[i : i + size]):x};ext=1\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\nX-Trailer: 1\r\n\r\n"


def test_chunked_bodies_are_parsed(server: str) -> None:
    request = head("POST", "/api/classify", {"x-functions-key": KEY, "Transfer-Encoding": "chunked"})
    status, _, payload = raw_exchange(server, request + chunked(BODY))
    assert status == 200 and payload["values"][0]["data"]["label"] == "espresso"


def test_a_chunked_request_keeps_the_connection_for_the_next_one(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    request = head("POST", "/api/classify", {"x-functions-key": KEY, "Transfer-Encoding": "chunked"}) + chunked(BODY)
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(request + head("GET", "/api/health", {"Connection": "close"}))
        data = b"".join(iter(lambda: conn.recv(65536), b""))
    assert [part[:4] for part in data.split(b"HTTP/1.1 ")[1:]] == [b"200 ", b"200 "]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"zz\r\n", 400, "chunked request body is malformed: bad chunk size line"),
        (
            b"5\r\nshortXX\r\n0\r\n\r\n",
            400,
            "chunked request body is malformed: a chunk's data does not end where its size says",
        ),
        (
            b"".join(b"f4240\r\n" + b" " * 1_000_000 + b"\r\n" for _ in range(6)) + b"0\r\n\r\n",
            413,
            "request body is over 5,000,000 bytes; the limit is 5,000,000 bytes (SKILL_MAX_REQUEST_BYTES); "
            "lower the skillset's batchSize",
        ),
    ],
)
def test_bad_or_large_chunked_bodies(server: str, body: bytes, status: int, message: str) -> None:
    request = head("POST", "/api/classify", {"x-functions-key": KEY, "Transfer-Encoding": "chunked"})
    got, headers, payload = raw_exchange(server, request + body)
    assert (got, payload["error"]["message"]) == (status, message)
    assert headers["connection"] == "close"


def test_other_transfer_codings_are_refused(server: str) -> None:
    request = head("POST", "/api/classify", {"x-functions-key": KEY, "Transfer-Encoding": "gzip, chunked"})
    status, _, payload = raw_exchange(server, request)
    assert status == 400
    assert payload["error"]["message"] == (
        "Transfer-Encoding 'gzip, chunked' is not supported; send Content-Length or chunked"
    )


@pytest.mark.parametrize(
    ("method", "path", "status", "allow", "code"),
    [
        ("PUT", "/api/classify", 404, None, "NotFound"),
        ("DELETE", "/api/health", 404, None, "NotFound"),
        ("OPTIONS", "/api/classify", 404, None, "NotFound"),
        ("PATCH", "/api/nope", 404, None, "NotFound"),
        ("BREW", "/api/classify", 501, None, "NotImplemented"),
    ],
)
def test_every_method_gets_a_json_answer(
    server: str, method: str, path: str, status: int, allow: str | None, code: str
) -> None:
    got, headers, payload = raw_exchange(server, head(method, path, {"Content-Length": "0"}))
    assert got == status and headers["content-type"] == "application/json"
    assert payload["error"]["code"] == code
    assert headers.get("allow") == allow


def test_head_gets_headers_only(server: str) -> None:
    """Health's function.json lists HEAD (uptime probes send it; the host matches methods exactly, so without
    it Azure answers 404): the answer is GET's status and headers, Content-Length included, and no body."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(
            head("HEAD", "/api/health", {})
            + head("HEAD", "/api/classify", {"x-functions-key": KEY})
            + head("GET", "/api/health", {"Connection": "close"})
        )
        data = b"".join(iter(lambda: conn.recv(65536), b""))
    first, second, third = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"\r\n\r\n")  # no body after HEAD's headers
    assert second.startswith(b"404 ") and second.endswith(b"\r\n\r\n")  # classify lists POST only
    assert third.startswith(b"200 ")
    length = re.search(rb"Content-Length: (\d+)", first)
    assert length is not None and int(length.group(1)) == len(third.split(b"\r\n\r\n", 1)[1])


def test_the_dev_servers_routes_are_the_function_folders_function_json() -> None:
    from shared.cli.devserver import ROUTES

    for path, route in ROUTES.items():
        spec = json.loads((ROOT / route.folder / "function.json").read_text())
        (trigger,) = [b for b in spec["bindings"] if b["type"] == "httpTrigger"]
        assert path == f"/api/{trigger['route']}"
        assert route.methods == {m.upper() for m in trigger["methods"]}
        assert route.needs_key == (trigger["authLevel"] != "anonymous")
    assert ROUTES["/api/health"].methods == {"GET", "HEAD"}
    assert {"/api/classify", "/api/extraction", "/api/health"} <= set(ROUTES)


def test_routes_are_case_insensitive_like_the_functions_host(server: str) -> None:
    status, payload, _ = fetch(f"{server}/API/Classify", BODY, {"x-functions-key": KEY})
    assert status == 200 and payload["values"][0]["data"]["label"] == "espresso"
    assert fetch(f"{server}/Api/HEALTH/")[0] == 200


def test_an_empty_body_is_reported_as_empty(server: str) -> None:
    status, _, payload = raw_exchange(server, head("POST", "/api/classify", {"x-functions-key": KEY}))
    assert (status, payload["error"]["message"]) == (
        400,
        'request body is empty; send a JSON object with a "values" list of records',
    )


def test_refusals_are_logged_with_their_reason_and_never_the_key(server: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        fetch(f"{server}/api/classify?code=not-the-key-xyz", BODY)
        fetch(f"{server}/api/nope")
        fetch(f"{server}/api/classify")
        fetch(f"{server}/api/classify", b"{", {"x-functions-key": KEY})
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert (
        "refused POST /api/classify: 401 Unauthorized: missing or wrong function key: send it as the "
        "x-functions-key header or the code query parameter" in lines
    )
    assert (
        "refused GET /api/nope: 404 NotFound: no function at /api/nope; try POST /api/classify or GET /api/health"
        in lines
    )
    assert "refused GET /api/classify: 404 NotFound: /api/classify answers POST only, not GET" in lines
    assert any(
        line.startswith("skill request refused: 400 InvalidRequest: request body is not valid JSON") for line in lines
    )
    assert "not-the-key-xyz" not in caplog.text and KEY not in caplog.text


@pytest.fixture
def impatient_server(install_service: Any) -> Iterator[str]:
    install_service(api_key=KEY)
    httpd = make_server(Settings(api_key=KEY), "127.0.0.1", 0)
    httpd.headers_timeout_s = 0.5
    httpd.body_grace_s = 0.5
    httpd.min_body_bytes_per_s = 100.0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host!s}:{port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_a_client_that_never_finishes_its_head_is_cut(impatient_server: str) -> None:
    host, port = impatient_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /api/classify HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        assert conn.recv(1024) == b""  # the server closed the connection (the client would wait 30 s)


def test_a_head_trickling_in_is_cut_at_its_deadline(impatient_server: str) -> None:
    # Each byte comes well within a per-read timeout; the whole head (about 4.6 s of them) not within 0.5 s.
    host, port = impatient_server.removeprefix("http://").split(":")
    head_bytes = b"POST /api/classify HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 50
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as conn, contextlib.suppress(OSError):
        for byte in head_bytes:
            conn.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.05)
    assert sent < len(head_bytes)  # sending failed before the head was complete: the server hung up


def test_a_body_trickling_in_is_cut_with_408(impatient_server: str) -> None:
    request = head("POST", "/api/classify", {"x-functions-key": KEY, "Content-Length": "100000"})
    status, headers, payload = raw_exchange(impatient_server, request, then=b"{")
    assert status == 408 and headers["connection"] == "close"
    assert payload["error"]["message"] == (
        "request body arrived too slowly (under 100 bytes/s after 0.5 s); the connection is closed"
    )


def test_a_client_hanging_up_leaves_no_traceback(server: str, capfd: pytest.CaptureFixture[str]) -> None:
    host, port = server.removeprefix("http://").split(":")
    for _ in range(5):
        conn = socket.create_connection((host, int(port)), timeout=20)
        conn.sendall(head("POST", "/api/classify", {"x-functions-key": KEY, "Content-Length": str(len(BODY))}) + BODY)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # reset before the answer is written
    assert fetch(f"{server}/api/health")[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_keep_alive_answers_in_one_send_with_nodelay(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        for _ in range(3):
            conn.sendall(head("GET", "/api/health", {}))
            data = conn.recv(65536)
            head_part, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    v
                    for k, v in (line.split(b": ", 1) for line in head_part.split(b"\r\n")[1:])
                    if k.lower() == b"content-length"
                )
            )
            assert len(body) == length  # headers and body arrived in one segment


@pytest.fixture
def no_local_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point `serve` at a local.settings.json in tmp_path (absent until a test writes it)."""
    path = tmp_path / "local.settings.json"
    monkeypatch.setattr("shared.core.settings.LOCAL_SETTINGS", path)
    return path


@pytest.fixture
def listening_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def test_serve_on_a_port_in_use_is_one_error_line(
    no_local_settings: Path, listening_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--port", str(listening_port)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: port {listening_port} on 127.0.0.1 is already in use; "
        "choose another with --port N (0 for a free one)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--port", "70000"],
            "error: port 70000 is out of range; choose one from 1 to 65535 with --port N, or --port 0 for a free one\n",
        ),
        (
            ["--port", "-1"],
            "error: port -1 is out of range; choose one from 1 to 65535 with --port N, or --port 0 for a free one\n",
        ),
        (
            ["--host", "nosuch.invalid", "--port", "0"],
            "error: host 'nosuch.invalid' does not resolve to an address of this machine; use --host 127.0.0.1 "
            "(or 0.0.0.0)\n",
        ),
    ],
)
def test_serve_bind_failures_are_one_error_line(
    no_local_settings: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main(["serve", *args]) == 1
    assert capsys.readouterr().err == message


class FakeServer:
    """Stands in for the bound server so `serve` returns at once: records the settings it was given."""

    given: Settings | None = None
    server_address = ("127.0.0.1", 7071)

    def serve_forever(self) -> None:
        raise KeyboardInterrupt

    def server_close(self) -> None:
        pass


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeServer]]:
    def make(settings: Settings, host: str, port: int) -> FakeServer:
        FakeServer.given = settings
        return FakeServer()

    monkeypatch.setattr("shared.cli.devserver.make_server", make)
    yield FakeServer
    FakeServer.given = None
    app.reset_service(None)


def test_serve_reads_local_settings_values_and_the_environment_wins(
    no_local_settings: Path,
    fake_server: type[FakeServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    no_local_settings.write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {"SKILL_API_KEY": "from-the-file", "SKILL_DEFAULT_TOP_K": "3", "SKILL_MAX_RECORDS": "7"},
            }
        )
    )
    for name in ("SKILL_API_KEY", "SKILL_DEFAULT_TOP_K"):
        monkeypatch.delenv(name, raising=False)  # restored (removed) after the test
    monkeypatch.setenv("SKILL_MAX_RECORDS", "9")
    assert cli.main(["serve"]) == 0
    settings = fake_server.given
    assert settings is not None
    assert (settings.api_key, settings.default_top_k, settings.max_records) == ("from-the-file", 3, 9)
    assert app.service().settings == settings
    err = capsys.readouterr().err
    assert err.startswith("settings from local.settings.json (2 values); serving ")
    assert "; function key required; a page to try images at http://127.0.0.1:7071/" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"IsEncrypted": true, "Values": {}}', "is encrypted (IsEncrypted: true); run `func settings decrypt` first"),
        ('{"Values": []}', 'must be a JSON object with a "Values" object of setting names and values'),
    ],
)
def test_serve_with_a_bad_local_settings_file_is_one_error_line(
    no_local_settings: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    no_local_settings.write_text(text)
    assert cli.main(["serve", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {no_local_settings} ") and message in err and err.count("\n") == 1


def test_serve_model_serves_that_folder(
    no_local_settings: Path, fake_server: type[FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tiny_bundle(tmp_path / "mine", classes=3)
    assert cli.main(["serve", "--model", str(folder)]) == 0
    settings = fake_server.given
    assert settings is not None and settings.model_dir == folder and not settings.uses_blob_store
    assert app.service().holder.current().bundle.root == folder
    assert str(folder) in capsys.readouterr().err
