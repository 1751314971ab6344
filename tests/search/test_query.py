"""`search-setup --keyframes` and `query` ("test the index"): the keyframes index fields and mappings are valid for
the search SDK's models, and `query` reads documents, totals, facets, moments and the indexer's status through the
real azure-search-documents clients, against the stand-in search service (tests/searchstub.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from shared.cli import main
from shared.cli.search import main_search_setup
from shared.search import client as searchclient
from shared.search.query import DocumentFilter, IndexReader, Moment, blob_name, clock, moments
from shared.search.templates import KEYFRAME_EXTENSIONS, FunctionKeyAuth, SearchSetupError, add_keyframes, render
from tests import searchmodels
from tests.search.test_searchsetup import FUNCTION, FUNCTION_KEY, SEARCH, STORAGE_ID, sdk_objects
from tests.searchstub import SearchStub

INDEX = "automl-keyframes-index"
INDEXER = "automl-keyframes-indexer"


def keyframes_rendered(**kwargs: Any) -> dict[str, dict[str, Any]]:
    return render(
        SEARCH, FUNCTION, auth=FunctionKeyAuth(FUNCTION_KEY), storage_resource_id=STORAGE_ID, keyframes=True, **kwargs
    )


# --- search-setup --keyframes ----------------------------------------------------------------------------------


def test_keyframes_index_has_the_video_fields_and_mappings() -> None:
    rendered = keyframes_rendered(container="keyframes")
    objects = sdk_objects(rendered)
    for kind, body in rendered.items():
        assert searchmodels.check(kind, body) == [], kind
    fields = {f.name: f for f in objects["index"].fields}
    video, timestamp = fields["sourceVideo"], fields["timestampMs"]
    assert (video.type, video.filterable, video.facetable) == ("Edm.String", True, True)
    assert (timestamp.type, timestamp.filterable, timestamp.sortable) == ("Edm.Int64", True, True)
    mappings = {m.target_field_name: m for m in objects["indexer"].field_mappings}
    assert mappings["sourceVideo"].source_field_name == "source_video"
    assert mappings["sourceVideo"].mapping_function.name == "urlDecode"
    assert mappings["timestampMs"].source_field_name == "timestamp_ms"
    assert mappings["id"].source_field_name == "metadata_storage_path"  # the template's key mapping stays
    assert objects["indexer"].parameters.configuration.indexed_file_name_extensions == KEYFRAME_EXTENSIONS
    # The usual skill outputs are still there.
    assert {"labels", "images"} <= set(fields)
    assert {m.target_field_name for m in objects["indexer"].output_field_mappings} == {"labels", "images"}


def test_keyframe_fields_clash_with_a_template_field() -> None:
    rendered = keyframes_rendered()
    with pytest.raises(SearchSetupError, match="already has a field 'sourceVideo'"):
        add_keyframes(rendered)


def setup_args(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "search_endpoint": SEARCH,
        "function_url": FUNCTION,
        "storage_resource_id": STORAGE_ID,
        "container": None,
        "prefix": None,
        "auth_resource_id": None,
        "function_key_env": "SKILL_FUNCTION_KEY",
        "key_env": None,
        "dry_run": True,
        "keyframes": True,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def test_search_setup_keyframes_defaults_to_the_keyframes_container_and_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main_search_setup(setup_args(), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["datasource"]["container"]["name"] == "keyframes"
    assert [shown[k]["name"] for k in ("datasource", "index", "skillset", "indexer")] == [
        "automl-keyframes-datasource",
        "automl-keyframes-index",
        "automl-keyframes-skillset",
        "automl-keyframes-indexer",
    ]
    assert {f["name"] for f in shown["index"]["fields"]} >= {"sourceVideo", "timestampMs", "labels", "images"}


# --- the filter, the moments, names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document_filter", "odata"),
    [
        (DocumentFilter(), None),
        (DocumentFilter(label="espresso"), "labels/any(l: l eq 'espresso')"),
        (DocumentFilter(label="O'Brien"), "labels/any(l: l eq 'O''Brien')"),
        (
            DocumentFilter(label="cat", min_confidence=0.5),
            "images/any(i: i/label eq 'cat' and i/confidence ge 0.5)",
        ),
        (DocumentFilter(max_confidence=0.4), "images/any(i: i/confidence le 0.4)"),
        (
            DocumentFilter(label="cat", model_version="v2", video="a.mp4"),
            "labels/any(l: l eq 'cat') and images/any(i: i/modelVersion eq 'v2') and sourceVideo eq 'a.mp4'",
        ),
    ],
)
def test_document_filter(document_filter: DocumentFilter, odata: str | None) -> None:
    assert document_filter.odata() == odata


def keyframe(
    video: str, ms: int, label: str, confidence: float = 0.9, labels: list[str] | None = None
) -> dict[str, Any]:
    return {
        "sourceVideo": video,
        "timestampMs": ms,
        "labels": labels if labels is not None else [label],
        "images": [{"label": label, "confidence": confidence, "labels": labels or [label], "modelVersion": "v1"}],
    }


def test_moments_join_consecutive_keyframes_of_one_video() -> None:
    frames = [
        keyframe("b.mp4", 5000, "dog", 0.7),
        keyframe("a.mp4", 0, "dog", 0.6),
        keyframe("a.mp4", 1000, "dog", 0.95),
        keyframe("a.mp4", 2000, "cat"),
        keyframe("a.mp4", 3000, "dog", 0.8),
        keyframe("b.mp4", 4000, "dog", 0.9),
    ]
    assert moments(frames, "dog") == [
        Moment("a.mp4", "dog", 0, 1000, 0.95, 2),
        Moment("a.mp4", "dog", 3000, 3000, 0.8, 1),
        Moment("b.mp4", "dog", 4000, 5000, 0.9, 2),
    ]
    assert moments(frames, "dog", min_confidence=0.75) == [
        Moment("a.mp4", "dog", 1000, 1000, 0.95, 1),
        Moment("a.mp4", "dog", 3000, 3000, 0.8, 1),
        Moment("b.mp4", "dog", 4000, 4000, 0.9, 1),
    ]
    # A label carried as one of several (multi-label), never the top label: a moment without a confidence.
    assert moments([keyframe("c.mp4", 0, "cat", labels=["cat", "dog"])], "dog") == [
        Moment("c.mp4", "dog", 0, 0, None, 1)
    ]


def test_clock() -> None:
    assert clock(0) == "00:00:00.000"
    assert clock(2400) == "00:00:02.400"
    assert clock(3_725_004) == "01:02:05.004"


@pytest.mark.parametrize(
    ("document", "name"),
    [
        (
            {"metadata_storage_path": "https://st.blob.core.windows.net/keyframes/dogs.mp4/000002400.jpg"},
            "dogs.mp4/000002400.jpg",
        ),
        ({"metadata_storage_path": "https://st.blob.core.windows.net/images/a%20b.png"}, "a b.png"),
        ({"metadata_storage_path": "http://127.0.0.1:10000/devstoreaccount1/images/x/y.png"}, "x/y.png"),
        ({"metadata_storage_name": "only-name.png"}, "only-name.png"),
    ],
)
def test_blob_name(document: dict[str, Any], name: str) -> None:
    assert blob_name(document) == name


# --- query against the stand-in service --------------------------------------------------------------------------


def image_doc(name: str, label: str, confidence: float, version: str = "v1") -> dict[str, Any]:
    return {
        "id": name,
        "content": "x" * 100,
        "metadata_storage_name": name,
        "metadata_storage_path": f"https://st.blob.core.windows.net/images/{name}",
        "labels": [label],
        "images": [
            {"label": label, "confidence": confidence, "labels": [label], "modelVersion": version, "pageNumber": 0}
        ],
    }


@pytest.fixture
def service(search_stubs: Any, monkeypatch: pytest.MonkeyPatch) -> SearchStub:
    stub: SearchStub = search_stubs(key="query-key")
    stub.add_pipeline()
    stub.add_documents(
        "automl-images-index",
        [
            image_doc("coffee.png", "espresso", 0.96),
            image_doc("cup.png", "espresso", 0.41, "v2"),
            image_doc("chelsea.png", "Egyptian cat", 0.38),
            image_doc("rocket.jpg", "missile", 0.37),
        ],
    )
    monkeypatch.setenv("SEARCH_ENDPOINT", stub.endpoint)
    monkeypatch.setenv("SEARCH_ADMIN_KEY", "query-key")
    monkeypatch.delenv("SEARCH_INDEX_NAME", raising=False)
    monkeypatch.delenv("SEARCH_INDEXER_NAME", raising=False)
    return stub


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["query", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_query_prints_total_facets_and_hits(service: SearchStub, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "--label", "espresso", "--count", "--facets")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "total: 2",
        "labels:",
        "  espresso  2",
        "model versions:",
        "  v1  1",
        "  v2  1",
        "coffee.png  espresso 0.9600",
        "cup.png  espresso 0.4100",
    ]
    [search] = [r for r in service.requests if r.path.endswith("search.post.search")]
    assert search.body["filter"] == "labels/any(l: l eq 'espresso')"
    assert search.body["count"] is True
    assert search.body["facets"] == ["labels,count:50", "images/modelVersion,count:50"]
    assert "content" not in search.body["select"]  # never a document's text


def test_query_low_confidence_as_json(service: SearchStub, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--max-confidence", "0.4", "--json", "--top", "5")
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["name"] for line in lines] == ["chelsea.png", "rocket.jpg"]
    assert lines[0]["images"] == [
        {"label": "Egyptian cat", "confidence": 0.38, "labels": ["Egyptian cat"], "modelVersion": "v1"}
    ]


def test_query_model_version_and_top_zero(service: SearchStub, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "--model-version", "v2", "--count", "--top", "0")
    assert (status, out, err) == (0, "total: 1\n", "")


def test_query_video_on_the_images_index_is_one_line(service: SearchStub, capsys: pytest.CaptureFixture[str]) -> None:
    service.definitions["indexes"]["automl-images-index"] = {
        "name": "automl-images-index",
        "fields": [{"name": n} for n in ("id", "metadata_storage_name", "metadata_storage_path", "labels", "images")],
    }
    status, out, err = run(capsys, "--video", "dogs.mp4")
    assert (status, out) == (1, "")
    assert err == (
        "error: index 'automl-images-index' has no keyframe fields (sourceVideo, timestampMs): --video and --moments "
        "read the keyframes index that `search-setup --keyframes` creates; set SEARCH_INDEX_NAME to it\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "--label", "x"], "error: --status reads the indexer only: leave out --label\n"),
        (
            ["--moments", "dog", "--facets"],
            "error: --moments takes --video and --min-confidence only: leave out --facets\n",
        ),
        (
            ["--min-confidence", "0.8", "--max-confidence", "0.2"],
            "error: --min-confidence 0.8 is above --max-confidence 0.2: no image can match\n",
        ),
    ],
)
def test_query_refuses_options_that_do_not_go_together(
    service: SearchStub, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run(capsys, *args) == (1, "", message)


def test_query_missing_endpoint_wrong_key_missing_index(
    service: SearchStub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEARCH_INDEX_NAME", "no-such-index")
    status, _, err = run(capsys, "--label", "x")
    assert status == 1
    assert err.startswith("error: index 'no-such-index' does not exist on search service http://127.0.0.1:")
    assert err.count("\n") == 1
    monkeypatch.setenv("SEARCH_ADMIN_KEY", "wrong-key")
    status, _, err = run(capsys, "--label", "x")
    assert status == 1
    assert "refused SEARCH_ADMIN_KEY (403)" in err and "wrong-key" not in err
    monkeypatch.delenv("SEARCH_ENDPOINT")
    assert run(capsys) == (
        1,
        "",
        "error: SEARCH_ENDPOINT is not set: set it to the search service's URL, https://<service>.search.windows.net\n",
    )


def test_status_prints_the_last_run_with_its_errors_and_warnings(
    service: SearchStub, capsys: pytest.CaptureFixture[str]
) -> None:
    service.set_running()
    service.finish_run(
        errors=[
            {
                "key": "https://st.blob.core.windows.net/images/broken.png",
                "errorMessage": "Could not execute skill because the Web API request failed.",
                "statusCode": 400,
                "name": "#1",
                "details": "Web API response status: 'BadRequest'",
                "documentationLink": "https://go.microsoft.com/fwlink/?linkid=2117997",
            }
        ],
        warnings=[
            {
                "key": "https://st.blob.core.windows.net/images/tiny.png",
                "message": "Could not execute skill because the Web API skill response is invalid.",
                "name": "#1",
                "details": None,
                "documentationLink": None,
            }
        ],
        processed=4,
    )
    status, out, _ = run(capsys, "--status")
    assert status == 0
    assert out.splitlines() == [
        "indexer automl-images-indexer: running; last run transientFailure (2026-01-01T00:00:00Z - "
        "2026-01-01T00:10:00Z), 4 items processed, 1 failed",
        "errors (1):",
        "  https://st.blob.core.windows.net/images/broken.png [#1]: Could not execute skill because the Web API "
        "request failed. (Web API response status: 'BadRequest')",
        "warnings (1):",
        "  https://st.blob.core.windows.net/images/tiny.png [#1]: Could not execute skill because the Web API skill "
        "response is invalid.",
    ]
    status, out, _ = run(capsys, "--status", "--json")
    report = json.loads(out)
    assert report["lastResult"]["errors"][0]["statusCode"] == 400
    assert report["lastResult"]["warnings"][0]["message"].startswith("Could not execute skill")
    assert [r.path for r in service.requests][-1] == "/indexers('automl-images-indexer')/search.status"


def test_moments_read_every_page(
    service: SearchStub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,203 keyframes of one video (an hour at 20 per minute): more than one 1,000-document page.
    frames = [
        keyframe("long.mp4", i * 3000, "dog" if 100 <= i < 1150 else "cat", 0.5 + (i % 7) / 20) for i in range(1203)
    ]
    service.add_documents(INDEX, frames)
    monkeypatch.setenv("SEARCH_INDEX_NAME", INDEX)
    status, out, err = run(capsys, "--moments", "dog")
    assert (status, err) == (0, "")
    assert out == "long.mp4  00:05:00.000-00:57:27.000  dog  0.80\n"
    pages = [r.body for r in service.requests if r.path.endswith("search.post.search")]
    assert [p.get("skip") for p in pages] == [None, 1000, None, 1000]
    reader = IndexReader(service.endpoint, INDEX, INDEXER, searchclient.credential("query-key"))
    assert sum(1 for _ in reader.documents(DocumentFilter(label="cat").odata(), select=["timestampMs"])) == 153
