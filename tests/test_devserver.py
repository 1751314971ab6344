"""The dev server over real HTTP on loopback: same functions, the host's key check, concurrent requests."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared.devserver import SkillServer, make_server
from shared.settings import Settings
from tests.conftest import SAMPLES

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
        405,
        {"error": {"code": "MethodNotAllowed", "message": "/api/classify accepts POST"}},
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
