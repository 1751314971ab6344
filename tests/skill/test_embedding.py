"""`embedding=true` on the skill URI and `/api/vectorize`, the Custom Web API vectorizer, through the function entry
points as the Functions host calls them, with the bundled sample model (its embedding is added in memory)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import azure.functions as func
import numpy as np
import pytest

import ClassifySkill
import VectorizeImage
from shared.skill.vectorizer import TEXT_REFUSED
from tests.conftest import SAMPLES
from tests.skill.test_extraction_skill import seed_folder

FOREIGN_REFUSED = (
    "imageUrl is not a blob of a storage account this app reads (VECTORIZE_IMAGE_ACCOUNTS or the model store's "
    "account), so it was not fetched: send the image as imageBinary, or add its account"
)


@pytest.fixture(autouse=True)
def _service(install_service: Any) -> None:
    install_service()


def call(main: Any, route: str, body: Any, params: dict[str, str] | None = None) -> tuple[int, Any]:
    response = main(func.HttpRequest(method="POST", url=route, body=json.dumps(body).encode(), params=params or {}))
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def skill_body(images: list[bytes]) -> dict[str, Any]:
    return {
        "values": [
            {"recordId": str(i), "data": {"image": {"$type": "file", "data": base64.b64encode(b).decode()}}}
            for i, b in enumerate(images)
        ]
    }


def embeddings(images: list[bytes]) -> np.ndarray:
    status, payload = call(ClassifySkill.main, "/api/classify", skill_body(images), {"embedding": "true"})
    assert status == 200
    by_id = {v["recordId"]: v for v in payload["values"]}
    return np.array([by_id[str(i)]["data"]["embedding"] for i in range(len(images))], dtype=np.float32)


def test_without_the_parameter_the_answer_has_no_embedding() -> None:
    photo = (SAMPLES / "coffee.png").read_bytes()
    plain = call(ClassifySkill.main, "/api/classify", skill_body([photo]))
    off = call(ClassifySkill.main, "/api/classify", skill_body([photo]), {"embedding": "false"})
    assert plain == off and plain[0] == 200
    assert "embedding" not in plain[1]["values"][0]["data"]


def test_embedding_true_adds_a_unit_vector_and_keeps_the_rest_of_the_answer() -> None:
    photo = (SAMPLES / "coffee.png").read_bytes()
    _, plain = call(ClassifySkill.main, "/api/classify", skill_body([photo]))
    _, with_vector = call(ClassifySkill.main, "/api/classify", skill_body([photo]), {"embedding": "true"})
    data = dict(with_vector["values"][0]["data"])
    vector = np.array(data.pop("embedding"), dtype=np.float64)
    assert data == plain["values"][0]["data"]
    assert vector.shape == (1280,)  # EfficientNet-Lite0's pooled features
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


def test_a_bad_embedding_parameter_is_refused() -> None:
    photo = (SAMPLES / "coffee.png").read_bytes()
    status, payload = call(ClassifySkill.main, "/api/classify", skill_body([photo]), {"embedding": "yes"})
    assert (status, payload) == (
        400,
        {"error": {"code": "InvalidRequest", "message": "query parameter embedding must be true or false, got 'yes'"}},
    )


def test_seed_dogs_nearest_neighbour_by_embedding_is_the_same_breed() -> None:
    folder = seed_folder()
    if folder is None:
        pytest.skip("seed photos ../shared/data/seed-dogs not present")
    paths = sorted(folder.glob("*.jpg"))
    assert len(paths) == 18
    vectors = embeddings([p.read_bytes() for p in paths])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    breeds = [p.stem.rstrip("0123456789") for p in paths]
    same = sum(breeds[i] == breeds[int(j)] for i, j in enumerate(similarity.argmax(axis=1)))
    assert same >= 16, f"{same} of 18 nearest neighbours are of the same breed"


def vector_request(data: dict[str, Any]) -> dict[str, Any]:
    return {"values": [{"recordId": "0", "data": data}]}


def test_vectorize_answers_the_skills_embedding_for_image_binary() -> None:
    photo = (SAMPLES / "chelsea.png").read_bytes()
    (expected,) = embeddings([photo])
    body = vector_request({"imageBinary": {"data": base64.b64encode(photo).decode()}})
    status, payload = call(VectorizeImage.main, "/api/vectorize", body)
    assert status == 200
    (value,) = payload["values"]
    assert value["recordId"] == "0" and value["errors"] is None
    assert list(value["data"]) == ["vector"]
    assert value["data"]["vector"] == expected.tolist()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"text": "a dog on a beach"}, TEXT_REFUSED),
        ({"imageUrl": "https://example.com/dog.jpg"}, FOREIGN_REFUSED),
        ({"imageUrl": "http://169.254.169.254/metadata/instance"}, FOREIGN_REFUSED),
        ({"imageUrl": "file:///etc/passwd"}, FOREIGN_REFUSED),
        ({"imageUrl": 7}, "imageUrl must be a URL string, got a number"),
        (
            {"imageBinary": {"url": "https://example.com/dog.jpg"}},
            'imageBinary must be an object {"data": "<base64 image>"}',
        ),
        ({}, 'record has no image: "data" needs "imageBinary" ({"data": "<base64>"}) or "imageUrl"'),
    ],
)
def test_vectorize_refuses_per_record(data: dict[str, Any], message: str) -> None:
    photo = base64.b64encode((SAMPLES / "coffee.png").read_bytes()).decode()
    body = {"values": [{"recordId": "bad", "data": data}, {"recordId": "ok", "data": {"imageBinary": {"data": photo}}}]}
    status, payload = call(VectorizeImage.main, "/api/vectorize", body)
    assert status == 200
    answers = {v["recordId"]: v for v in payload["values"]}
    assert answers["bad"] == {"recordId": "bad", "data": {}, "errors": [{"message": message}], "warnings": None}
    assert len(answers["ok"]["data"]["vector"]) == 1280


def test_a_model_without_an_embedding_says_so(install_service: Any, sample_engine: Any) -> None:
    """A detector (or a classifier whose head is not linear) has no embedding: the skill still answers, with a
    warning, and the vectorizer answers a per-record error."""
    from tests.conftest import preloaded_holder

    headless = copy.copy(sample_engine)
    headless._can_embed = False
    install_service(holder=preloaded_holder(headless))
    photo = (SAMPLES / "coffee.png").read_bytes()
    status, payload = call(ClassifySkill.main, "/api/classify", skill_body([photo]), {"embedding": "true"})
    assert status == 200
    (value,) = payload["values"]
    assert "embedding" not in value["data"] and value["data"]["label"] == "espresso"
    assert {"message": f"embedding=true: model {headless.version} (multiclass) has no embedding; only classification "
            "models have one"} in value["warnings"]  # fmt: skip
    _, answer = call(
        VectorizeImage.main,
        "/api/vectorize",
        vector_request({"imageBinary": {"data": base64.b64encode(photo).decode()}}),
    )
    assert answer["values"][0]["errors"] == [
        {
            "message": f"model {headless.version} (multiclass) has no embedding: only classification models can be the "
            "index's vectorizer"
        }
    ]
