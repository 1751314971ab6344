"""POST /api/extraction, the older AutoML Vision Classifier PowerSkill's route: the notebook's request works
unchanged, through ExtractionSkill.main (as the Functions host calls it) and through the dev server, and the
answer is the one /api/classify gives."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import ClassifySkill
import ExtractionSkill
from shared.cli.devserver import SkillServer, make_server
from shared.core.settings import Settings
from tests.conftest import ROOT, SAMPLES

KEY = "test-key-not-a-secret"


def seed_folder() -> Path | None:
    """../shared/data/seed-dogs next to the repository (or next to the folder holding its worktrees)."""
    for parent in ROOT.parents:
        candidate = parent / "shared" / "data" / "seed-dogs"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="module")
def notebook_body() -> bytes:
    """The PowerSkill notebook's test request, exactly: one record, input `images`, a bare {"data": ...}."""
    folder = seed_folder()
    if folder is None:
        pytest.skip("seed photos ../shared/data/seed-dogs not present")
    b64 = (folder / "rottweiler.b64.txt").read_text().strip()
    return json.dumps({"values": [{"recordId": "0", "data": {"images": {"data": b64}}}]}).encode()


@pytest.fixture(autouse=True)
def _service(install_service: Any) -> None:
    install_service()


def call(main: Any, route: str, body: bytes) -> tuple[int, Any]:
    response = main(func.HttpRequest(method="POST", url=route, body=body, params={}))
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def test_notebook_request_on_the_extraction_entry_point_answers_rottweiler(notebook_body: bytes) -> None:
    status, payload = call(ExtractionSkill.main, "/api/extraction", notebook_body)
    assert status == 200
    (answer,) = payload["values"]
    assert answer["recordId"] == "0"
    assert answer["errors"] is None
    assert answer["data"]["amllabel"] == "Rottweiler"
    assert answer["data"]["label"] == "Rottweiler"


def test_extraction_answers_exactly_like_classify(notebook_body: bytes) -> None:
    coffee = base64.b64encode((SAMPLES / "coffee.png").read_bytes()).decode()
    for body in (notebook_body, json.dumps({"values": [{"recordId": "x", "data": {"image": coffee}}]}).encode(), b"{"):
        assert call(ExtractionSkill.main, "/api/extraction", body) == call(ClassifySkill.main, "/api/classify", body)


def test_extraction_has_the_same_binding_as_classify_but_its_own_route() -> None:
    extraction = json.loads((ROOT / "ExtractionSkill" / "function.json").read_text())
    classify = json.loads((ROOT / "ClassifySkill" / "function.json").read_text())
    assert extraction["bindings"][0].pop("route") == "extraction"
    assert classify["bindings"][0].pop("route") == "classify"
    assert extraction == classify
    assert extraction["bindings"][0]["authLevel"] == "function"


@pytest.fixture
def server(install_service: Any) -> Iterator[str]:
    settings = Settings(api_key=KEY)
    install_service(api_key=KEY)
    httpd: SkillServer = make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host!s}:{port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_notebook_request_through_the_dev_server(server: str, notebook_body: bytes) -> None:
    # The migrated skillset sends the function key in x-functions-key instead of Ocp-Apim-Subscription-Key.
    status, payload = post(f"{server}/api/extraction", notebook_body, {"x-functions-key": KEY})
    assert status == 200
    (answer,) = payload["values"]
    assert (answer["recordId"], answer["errors"], answer["data"]["amllabel"]) == ("0", None, "Rottweiler")
    # The old header alone is not a function key: the host answers 401, as for /api/classify.
    status, payload = post(f"{server}/api/extraction", notebook_body, {"Ocp-Apim-Subscription-Key": KEY})
    assert status == 401 and payload["error"]["code"] == "Unauthorized"
