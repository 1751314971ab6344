"""ClassifySkill.main called the way the Functions host calls it, with Azure AI Search's payload shapes."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import ClassifySkill
import Health
from shared.core.errors import ModelNotReady
from shared.inference.scheduler import INFERENCE_RUN
from shared.modelstore.holder import ModelHolder
from shared.modelstore.source import FolderSource
from tests.conftest import SAMPLES, encode, jpeg_bytes

COFFEE = (SAMPLES / "coffee.png").read_bytes()
CAT_JPEG = jpeg_bytes(Image.open(SAMPLES / "chelsea.png"))
B64_COFFEE = base64.b64encode(COFFEE).decode()
B64_CAT = base64.b64encode(CAT_JPEG).decode()
SEED_ROTTWEILER = Path(__file__).resolve().parents[3] / "shared" / "data" / "seed-dogs" / "rottweiler.b64.txt"


def normalized_image(b64: str, width: int = 451, height: int = 300) -> dict[str, Any]:
    """The object Azure AI Search sends for /document/normalized_images/*."""
    return {
        "$type": "file",
        "data": b64,
        "width": width,
        "height": height,
        "originalWidth": width * 2,
        "originalHeight": height * 2,
        "rotationFromOriginal": 0,
        "contentOffset": 0,
        "pageNumber": 1,
        "contentType": "image/jpeg",
        "url": None,
    }


def call(body: Any, params: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, Any]:
    request = func.HttpRequest(
        method="POST",
        url="/api/classify",
        body=raw if raw is not None else json.dumps(body).encode(),
        params=params or {},
    )
    response = ClassifySkill.main(request)
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body()), response.headers


def by_id(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["recordId"]: v for v in payload["values"]}


@pytest.fixture(autouse=True)
def _service(install_service: Any) -> None:
    install_service()


def test_mixed_shapes_and_input_names_in_one_batch() -> None:
    status, payload, _ = call(
        {
            "values": [
                {"recordId": "a", "data": {"image": normalized_image(B64_CAT)}},
                {"recordId": "b", "data": {"image": B64_COFFEE}},
                {"recordId": "c", "data": {"file_data": {"$type": "file", "data": B64_COFFEE}}},
                {"recordId": "d", "data": {"images": {"data": B64_CAT}}},
                {"recordId": "e", "data": {"image": "data:image/png;base64," + B64_COFFEE}},
            ]
        }
    )
    assert status == 200
    answers = by_id(payload)
    assert set(answers) == {"a", "b", "c", "d", "e"}
    for record_id in "bce":
        assert answers[record_id]["data"]["label"] == "espresso"
    for record_id in "ad":
        assert answers[record_id]["data"]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    a = answers["a"]
    assert a["errors"] is None and a["warnings"] is None
    assert set(a["data"]) == {"label", "confidence", "labels", "predictions", "modelVersion", "amllabel"}
    assert a["data"]["amllabel"] == a["data"]["label"] and a["data"]["labels"] == [a["data"]["label"]]
    assert len(a["data"]["predictions"]) == 5
    assert a["data"]["modelVersion"] == "sample-efficientnet-lite0-imagenet"


def test_older_powerskill_notebook_request_gets_rottweiler() -> None:
    if SEED_ROTTWEILER.is_file():
        b64 = SEED_ROTTWEILER.read_text().strip()
    else:  # CI without the shared seed photos: any real dog photo would do, but we only ship CC0 samples
        pytest.skip("seed photo ../shared/data/seed-dogs/rottweiler.b64.txt not present")
    status, payload, _ = call({"values": [{"recordId": "0", "data": {"images": {"data": b64}}}]})
    assert status == 200
    (answer,) = payload["values"]
    assert answer["recordId"] == "0" and answer["errors"] is None
    assert answer["data"]["amllabel"] == "Rottweiler"


def test_top_k_and_threshold_query_parameters() -> None:
    body = {"values": [{"recordId": "1", "data": {"image": B64_COFFEE}}]}
    _, payload, _ = call(body, {"topK": "2"})
    assert len(payload["values"][0]["data"]["predictions"]) == 2
    _, payload, _ = call(body, {"threshold": "0.999"})
    answer = payload["values"][0]
    assert answer["data"]["label"] is None and answer["data"]["amllabel"] is None and answer["data"]["labels"] == []
    assert answer["errors"] is None
    assert answer["warnings"] == [
        {
            "message": "low confidence: no label scored at or above the threshold 0.999 (best: 'espresso' at "
            f"{answer['data']['confidence']:.4f})"
        }
    ]


def test_small_images_are_classified_with_an_upscale_warning() -> None:
    small = base64.b64encode(encode(Image.open(SAMPLES / "coffee.png").resize((120, 80)), "PNG")).decode()
    _, payload, _ = call({"values": [{"recordId": "s", "data": {"image": small}}]})
    (answer,) = payload["values"]
    assert answer["data"]["label"]
    assert answer["warnings"] == [
        {
            "message": "image is 120x80, smaller than the model's 256-pixel input size; it was upscaled, so its "
            "scores are less reliable"
        }
    ]


def test_empty_batch_is_answered_empty() -> None:
    assert call({"values": []})[:2] == (200, {"values": []})


GIF = base64.b64encode(encode(Image.new("P", (64, 64)), "GIF")).decode()
TINY = base64.b64encode(encode(Image.new("RGB", (10, 10)), "PNG")).decode()
NOT_IMAGE = base64.b64encode(b"%PDF-1.4 a pdf, not an image").decode()

BAD_RECORDS = [
    ({}, 'record has no image: "data" needs "image" (or "images", "file_data") holding an image'),
    ({"image": None}, 'record has no image: "data" needs "image" (or "images", "file_data") holding an image'),
    ({"image": "!!not base64!!"}, "image data is not valid base64"),
    ({"image": NOT_IMAGE}, "data is not an image that can be decoded (JPEG, PNG, GIF, BMP, TIFF or WebP expected)"),
    ({"image": TINY}, "image is 10x10; the shortest side must be at least 16 pixels"),
    (
        {"image": 42},
        'input "image" must be a normalized image object, a file object {"$type": "file", "data": ...} '
        "or a base64 string; got a number",
    ),
    (
        {"image": [B64_COFFEE]},
        'input "image" is a list; classify one image per record by setting the skill\'s '
        "context to /document/normalized_images/*",
    ),
    ({"image": {"$type": "file"}}, 'input "image" is an object without a base64 string in "data"'),
    (
        {"image": {"url": "https://example.invalid/x.jpg"}},
        'input "image" has a url but no "data"; images are not '
        "fetched by URL: map /document/normalized_images/* (imageAction generateNormalizedImages) "
        "or /document/file_data",
    ),
    (
        {"file_data": {"$type": "file", "data": base64.b64encode(b"x" * 3000).decode()}},
        "data is not an image that can be decoded (JPEG, PNG, GIF, BMP, TIFF or WebP expected)",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_RECORDS)
def test_bad_records_get_their_own_error_and_neighbours_are_answered(data: dict[str, Any], message: str) -> None:
    status, payload, _ = call(
        {
            "values": [
                {"recordId": "good1", "data": {"image": B64_COFFEE}},
                {"recordId": "bad", "data": data},
                {"recordId": "good2", "data": {"image": normalized_image(B64_CAT)}},
            ]
        }
    )
    assert status == 200
    answers = by_id(payload)
    assert answers["bad"] == {"recordId": "bad", "data": {}, "errors": [{"message": message}], "warnings": None}
    assert answers["good1"]["data"]["label"] == "espresso" and answers["good1"]["errors"] is None
    assert answers["good2"]["data"]["label"] and answers["good2"]["errors"] is None


def test_record_without_data_object() -> None:
    _, payload, _ = call({"values": [{"recordId": "x"}, {"recordId": "y", "data": "text"}]})
    assert [v["errors"] for v in payload["values"]] == [
        [{"message": 'record has no "data" object: send {"recordId": ..., "data": {"image": ...}}'}],
        [{"message": 'record has no "data" object (got a string)'}],
    ]
    _, payload, _ = call({"values": [{"recordId": "x", "data": None}]})
    assert payload["values"][0]["errors"] == [{"message": 'record has no "data" object (got null)'}]


@pytest.mark.parametrize(
    "url", ["https://account.blob.core.windows.net/images/cat.jpg?sv=x", "http://example.com/a.png", " s3://b/k"]
)
@pytest.mark.parametrize("name", ["image", "images", "file_data"])
def test_an_image_given_as_a_url_string_says_urls_are_not_fetched(url: str, name: str) -> None:
    _, payload, _ = call({"values": [{"recordId": "u", "data": {name: url}}]})
    assert payload["values"][0]["errors"] == [
        {
            "message": f'input "{name}" is a URL; images are not fetched by URL: map /document/normalized_images/* '
            "(imageAction generateNormalizedImages) or /document/file_data, or send the image as base64"
        }
    ]


def test_image_limits_from_settings(install_service: Any) -> None:
    install_service(max_image_bytes=500_000, max_image_pixels=100_000)
    big = base64.b64encode(b"\xff" * 600_000).decode()
    _, payload, _ = call(
        {
            "values": [
                {"recordId": "bytes", "data": {"image": big}},
                {"recordId": "pixels", "data": {"image": B64_COFFEE}},
            ]
        }
    )
    answers = by_id(payload)
    assert answers["bytes"]["errors"] == [{"message": "image is about 600,000 bytes; the limit is 500,000 bytes"}]
    assert answers["pixels"]["errors"] == [
        {"message": "image is 600x400 = 240,000 pixels; the limit is 100,000 pixels"}
    ]


BAD_ENVELOPES = [
    (b"not json", 400, "InvalidRequest", "request body is not valid JSON (line 1, column 1)"),
    (b"\xff\xfe", 400, "InvalidRequest", "request body is not valid JSON (line 1, column 1)"),
    (b"[]", 400, "InvalidRequest", 'request body must be a JSON object with a "values" list of records'),
    (b'{"values": {}}', 400, "InvalidRequest", 'request body must be a JSON object with a "values" list of records'),
    (b'{"values": [1]}', 400, "InvalidRequest", "values[0] must be an object with a recordId, got a number"),
    (
        b'{"values": [{"data": {}}]}',
        400,
        "InvalidRequest",
        'values[0] has no "recordId": each record needs one, a non-empty string unique in the batch',
    ),
    (
        b'{"values": [{"recordId": null, "data": {}}]}',
        400,
        "InvalidRequest",
        'values[0] needs a "recordId" that is a non-empty string, got null',
    ),
    (
        b'{"values": [{"recordId": "", "data": {}}]}',
        400,
        "InvalidRequest",
        'values[0] needs a "recordId" that is a non-empty string, got an empty string',
    ),
    (
        b'{"values": [{"recordId": 7, "data": {}}]}',
        400,
        "InvalidRequest",
        'values[0] needs a "recordId" that is a non-empty string, got a number',
    ),
    (
        b'{"values": [{"recordId": "a"}, {"recordId": "b"}, {"recordId": "a"}]}',
        400,
        "InvalidRequest",
        "recordId 'a' appears more than once (values[0] and values[2])",
    ),
    (b"", 400, "InvalidRequest", 'request body is empty; send a JSON object with a "values" list of records'),
    (b" \r\n", 400, "InvalidRequest", 'request body is empty; send a JSON object with a "values" list of records'),
    (
        b'{"values": [{"recordId": "1", "data": {"image": ' + b"[" * 5000 + b"]" * 5000 + b"}}]}",
        400,
        "InvalidRequest",
        f"request body nests JSON arrays or objects too deeply to parse (the limit is about "
        f"{sys.getrecursionlimit():,} levels; a skill request needs 5)",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code", "message"), BAD_ENVELOPES)
def test_bad_envelopes(raw: bytes, status: int, code: str, message: str) -> None:
    got_status, payload, _ = call(None, raw=raw)
    assert (got_status, payload) == (status, {"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"topK": "0"}, "query parameter topK must be an integer from 1 to 1000, got '0'"),
        ({"topK": "five"}, "query parameter topK must be an integer from 1 to 1000, got 'five'"),
        ({"threshold": "1.5"}, "query parameter threshold must be a number from 0 to 1, got '1.5'"),
        ({"threshold": "high"}, "query parameter threshold must be a number from 0 to 1, got 'high'"),
    ],
)
def test_bad_query_parameters(params: dict[str, str], message: str) -> None:
    status, payload, _ = call({"values": []}, params)
    assert (status, payload) == (400, {"error": {"code": "InvalidRequest", "message": message}})


def test_limits_on_request_size_and_record_count(install_service: Any) -> None:
    install_service(max_request_bytes=2048, max_records=2)
    status, payload, _ = call(None, raw=b'{"values": [' + b" " * 3000 + b"]}")
    assert (status, payload["error"]["code"]) == (413, "PayloadTooLarge")
    assert payload["error"]["message"] == (
        "request body is 3,014 bytes; the limit is 2,048 bytes (SKILL_MAX_REQUEST_BYTES); "
        "lower the skillset's batchSize"
    )
    status, payload, _ = call({"values": [{"recordId": str(i), "data": {}} for i in range(3)]})
    assert (status, payload) == (
        413,
        {
            "error": {
                "code": "PayloadTooLarge",
                "message": "request has 3 records; the limit is 2 (SKILL_MAX_RECORDS); lower the skillset's batchSize",
            }
        },
    )


def test_no_model_is_503_with_retry_after(install_service: Any, tmp_path: Path) -> None:
    def broken(path: Path) -> Any:
        from shared.core.errors import BundleError

        raise BundleError(f"no model.onnx in {path}")

    now = [1000.0]
    install_service(holder=ModelHolder(FolderSource(tmp_path), broken, retry_s=30, clock=lambda: now[0]))
    status, payload, headers = call({"values": [{"recordId": "1", "data": {"image": B64_COFFEE}}]})
    assert status == 503 and headers["Retry-After"] == "30"
    assert payload == {
        "error": {"code": "ModelNotReady", "message": f"no model is loaded yet: no model.onnx in {tmp_path}"}
    }
    now[0] += 10
    assert call({"values": []})[2]["Retry-After"] == "20"
    health = Health.main(func.HttpRequest(method="GET", url="/api/health", body=b""))
    assert health.status_code == 503
    assert json.loads(health.get_body())["model"]["lastError"] == f"no model.onnx in {tmp_path}"


LATE = [
    {
        "message": "not classified: the batch ran past its 200 s budget (SKILL_DEADLINE_SECONDS) before "
        "reaching this record; lower the skillset's batchSize"
    }
]


@pytest.mark.parametrize(
    ("readings_in_time", "classified"),
    [
        # The request's start, the chunk's check, then one check before each of the 8 images: the clock
        # passes the deadline after the third image started, so no run starts either.
        (5, []),
        # All 8 images prepared; the first run starts in time, the second does not.
        (11, [str(i) for i in range(INFERENCE_RUN)]),
        (12, [str(i) for i in range(2 * INFERENCE_RUN)]),
        (10 + 8 // INFERENCE_RUN, [str(i) for i in range(8)]),
    ],
)
def test_deadline_is_checked_before_each_image_and_each_run(
    install_service: Any, readings_in_time: int, classified: list[str]
) -> None:
    # One decode thread makes the order of clock readings fixed: the request's start, the chunk's check,
    # one check before each image, then one before each inference run of INFERENCE_RUN images.
    readings = [0]

    def clock() -> float:
        readings[0] += 1
        return 0.0 if readings[0] <= readings_in_time else 250.0

    install_service(deadline_s=200.0, decode_threads=1, clock=clock)
    n = 8
    status, payload, _ = call({"values": [{"recordId": str(i), "data": {"image": B64_COFFEE}} for i in range(n)]})
    assert status == 200
    answers = payload["values"]
    assert [a["recordId"] for a in answers] == [str(i) for i in range(n)]
    assert [a["recordId"] for a in answers if a["data"].get("label") == "espresso"] == classified
    late = [a for a in answers if a["recordId"] not in classified]
    assert all(a["data"] == {} and a["errors"] == LATE for a in late)


def test_deadline_budget_answers_later_chunks_with_an_error(install_service: Any) -> None:
    from shared.inference.scheduler import MAX_INFERENCE_BATCH

    ticks = iter([0.0])
    install_service(deadline_s=200.0, clock=lambda: next(ticks, 250.0))
    n = MAX_INFERENCE_BATCH + 3
    status, payload, _ = call({"values": [{"recordId": str(i), "data": {"image": B64_COFFEE}} for i in range(n)]})
    assert status == 200 and len(payload["values"]) == n
    assert all(a["data"] == {} and "SKILL_DEADLINE_SECONDS" in a["errors"][0]["message"] for a in payload["values"])


def test_invalid_settings_are_503_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.skill import service as app

    app.reset_service(None)
    monkeypatch.setenv("SKILL_MAX_RECORDS", "lots")
    status, payload, headers = call({"values": []})
    assert status == 503 and headers["Retry-After"] == "60"
    assert payload == {
        "error": {
            "code": "Misconfigured",
            "message": "setting SKILL_MAX_RECORDS='lots' is invalid: expected an integer from 1 to 100000",
        }
    }


def test_a_store_the_settings_name_but_the_sdk_refuses_is_503_not_500(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.skill import service as app

    app.reset_service(None)
    monkeypatch.setenv("MODEL_BLOB_CONNECTION_STRING", "not a connection string")
    status, payload, headers = call({"values": []})
    assert status == 503 and headers["Retry-After"] == "60"
    assert payload == {
        "error": {
            "code": "Misconfigured",
            "message": "MODEL_BLOB_CONNECTION_STRING is not a valid storage connection string",
        }
    }
    health = Health.main(func.HttpRequest(method="GET", url="/api/health", body=b""))
    assert health.status_code == 503 and json.loads(health.get_body())["error"]["code"] == "Misconfigured"
    app.reset_service(None)


def test_health_reports_the_model() -> None:
    response = Health.main(func.HttpRequest(method="GET", url="/api/health", body=b""))
    body = json.loads(response.get_body())
    assert response.status_code == 200 and body["status"] == "ready"
    assert body["model"]["version"] == "sample-efficientnet-lite0-imagenet"
    assert body["model"]["labels"] == 1000 and body["model"]["task"] == "multiclass"


record_data = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.integers(),
    st.just({}),
    st.fixed_dictionaries({"image": st.one_of(st.none(), st.text(max_size=8), st.just(B64_COFFEE), st.just(GIF))}),
    st.fixed_dictionaries(
        {"images": st.fixed_dictionaries({"data": st.one_of(st.just(B64_CAT), st.text(max_size=4))})}
    ),
    st.fixed_dictionaries({"file_data": st.one_of(st.integers(), st.just({"$type": "file", "data": GIF}))}),
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=6), record_data), max_size=6, unique_by=lambda r: r[0]),
    st.dictionaries(st.sampled_from(["topK", "threshold"]), st.text(max_size=4), max_size=2),
)
def test_any_batch_answers_every_record_exactly_once_and_never_500(records: list[Any], params: dict[str, str]) -> None:
    body = {"values": [{"recordId": rid, "data": data} for rid, data in records]}
    status, payload, _ = call(body, params)
    assert status in (200, 400)
    if status == 400:
        assert set(payload) == {"error"} and payload["error"]["message"].startswith("query parameter")
        return
    ids = [v["recordId"] for v in payload["values"]]
    assert sorted(ids) == sorted(rid for rid, _ in records)
    for value in payload["values"]:
        assert set(value) == {"recordId", "data", "errors", "warnings"}
        if value["errors"] is not None:
            assert value["data"] == {} and all(set(e) == {"message"} for e in value["errors"])
        else:
            assert value["data"]["modelVersion"] == "sample-efficientnet-lite0-imagenet"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
raw_bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"values": st.lists(json_values, max_size=4)}).map(lambda v: json.dumps(v).encode()),
    st.tuples(st.integers(1, 20_000), st.sampled_from([b"[", b'{"a":', b'{"values":['])).map(lambda t: t[1] * t[0]),
    st.tuples(st.integers(900, 20_000), st.sampled_from([b"[", b'{"values":['])).map(
        lambda t: t[1] * t[0] + b"]" * t[0]
    ),
    st.binary(max_size=64).map(lambda b: b'{"values": [{"recordId": "1", "data": {"image": "' + b + b'"}}]}'),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(raw_bodies, st.dictionaries(st.sampled_from(["topK", "threshold"]), st.text(max_size=4), max_size=2))
def test_fuzzed_request_bodies_never_answer_500_and_always_answer_json(raw: bytes, params: dict[str, str]) -> None:
    status, payload, _ = call(None, params, raw=raw)  # call() asserts the JSON mimetype and parses the body
    assert status in (200, 400, 413)
    if status == 200:
        assert set(payload) == {"values"}
    else:
        assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}
        assert "Traceback" not in payload["error"]["message"]


def test_model_not_ready_is_not_a_caller_error() -> None:
    assert ModelNotReady("x").status == 503
