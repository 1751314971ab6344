"""`python -m shared query --like PHOTO`: the photo embedded as /api/vectorize embeds it, a VectorizedQuery sent
through azure-search-documents to the stand-in search service (tests/searchstub.py), the nearest documents printed."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared import cli
from shared.core.settings import Settings
from shared.skill.service import SkillService
from tests.conftest import SAMPLES
from tests.searchstub import SearchStub

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")


def vector_of(name: str) -> list[float]:
    body = {
        "values": [
            {
                "recordId": "0",
                "data": {"imageBinary": {"data": base64.b64encode((SAMPLES / name).read_bytes()).decode()}},
            }
        ]
    }
    status, answer, _ = SkillService(Settings()).vectorize(json.dumps(body).encode())
    assert status == 200
    return list(json.loads(answer)["values"][0]["data"]["vector"])


@pytest.fixture
def stub(search_stubs: Any, monkeypatch: pytest.MonkeyPatch) -> SearchStub:
    found: SearchStub = search_stubs(pipeline=True)
    found.indexes["automl-images-index"] = [
        {
            "id": f"doc-{i}",
            "metadata_storage_name": name,
            "labels": [name.split(".")[0]],
            "imageEmbedding": vector_of(name),
        }
        for i, name in enumerate(PHOTOS)
    ]
    for key in ("AZUREML_MODEL_DIR", "MODEL_BLOB_CONNECTION_STRING", "MODEL_BLOB_ACCOUNT_URL", "REINDEX_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SEARCH_ENDPOINT", found.endpoint)
    monkeypatch.setenv("SEARCH_ADMIN_KEY", found.key)
    return found


def test_query_like_prints_the_nearest_documents_with_labels_and_scores(
    stub: SearchStub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["query", "--like", str(SAMPLES / "chelsea.png"), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"nearest to {SAMPLES / 'chelsea.png'} (model sample-efficientnet-lite0-imagenet, 1280 dimensions) in index "
        "automl-images-index:"
    )
    assert lines[1].split() == ["score", "name", "labels"]
    assert len(lines) == 5
    score, name, label = lines[2].split()
    assert (name, label) == ("chelsea.png", "chelsea") and abs(float(score) - 1.0) < 1e-4
    scores = [float(line.split()[0]) for line in lines[2:]]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.9
    (request,) = [r for r in stub.requests if r.path.endswith("/docs/search.post.search")]
    (query,) = request.body["vectorQueries"]
    assert (query["kind"], query["fields"], query["k"], len(query["vector"])) == ("vector", "imageEmbedding", 3, 1280)


def test_query_like_failures_are_one_line(
    stub: SearchStub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["query", "--like", str(SAMPLES / "missing.png")]) == 1
    assert capsys.readouterr().err == f"error: cannot read {SAMPLES / 'missing.png'} (No such file or directory)\n"
    monkeypatch.setenv("SEARCH_INDEX_NAME", "nope")
    assert cli.main(["query", "--like", str(SAMPLES / "chelsea.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'nope'" in err and err.count("\n") == 1
    monkeypatch.delenv("SEARCH_INDEX_NAME")
    assert cli.main(["query", "--like", str(SAMPLES / "chelsea.png"), "--label", "cat"]) == 1
    assert capsys.readouterr().err == "error: --like takes --top, --json and --model only: leave out --label\n"
    assert cli.main(["query", "--label", "cat", "--model", "x"]) == 1
    assert capsys.readouterr().err == "error: --model only applies with --like\n"
