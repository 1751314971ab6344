"""/api/vectorize with the Blob model store on a real Azurite: imageUrls of the store's account are read with the
app's credentials (others refused), and query vectors come from the version the index was embedded with until
re-enrichment with the current one has finished (reindex.json's `embedded`)."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import azure.functions as func
import numpy as np
import pytest
from PIL import Image

import VectorizeImage
from shared.core.settings import Settings
from shared.modelstore.blobstore import BlobModelStore
from shared.search.record import read_reindex_record, write_reindex_record
from shared.skill import service as app
from tests.conftest import SAMPLES
from tests.modelfactory import tiny_bundle

PHOTO = SAMPLES / "chelsea.png"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def settings(blob_settings: Settings) -> Settings:
    return dataclasses.replace(blob_settings, poll_s=60.0)


@pytest.fixture
def store(settings: Settings) -> BlobModelStore:
    found = BlobModelStore.from_settings(settings)
    assert found is not None
    found.ensure_container()
    return found


def vectorize(data: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"values": [{"recordId": "q", "data": data}]}).encode()
    response = VectorizeImage.main(func.HttpRequest(method="POST", url="/api/vectorize", body=body, params={}))
    assert response.status_code == 200
    (value,) = json.loads(response.get_body())["values"]
    assert value["recordId"] == "q"
    return dict(value)


def binary() -> dict[str, Any]:
    return {"imageBinary": {"data": base64.b64encode(PHOTO.read_bytes()).decode()}}


def own_vector(folder: Path) -> list[float]:
    from shared.inference.factory import load_model

    model = load_model(folder).with_embedding()  # type: ignore[attr-defined]
    batch = model.preprocess_batch([Image.open(PHOTO).convert("RGB")])
    ((_, embedding),) = model.run(batch)
    return list(embedding.tolist())


@pytest.fixture
def served(settings: Settings) -> Any:
    clock = Clock()
    service = app.SkillService(settings, clock=clock)
    app.reset_service(service)
    yield service, clock
    app.reset_service(None)


def test_an_image_url_of_the_stores_account_is_read_and_others_are_refused(
    settings: Settings, store: BlobModelStore, served: Any, tmp_path: Path, azurite: Any
) -> None:
    store.publish(tiny_bundle(tmp_path / "v1", crop=32), version="v1")
    from azure.storage.blob import BlobServiceClient

    container = f"images-{uuid.uuid4().hex[:8]}"
    client = BlobServiceClient.from_connection_string(settings.blob_connection_string or "")
    client.create_container(container)
    client.get_blob_client(container, "cats/chelsea one.png").upload_blob(PHOTO.read_bytes())
    url = f"{azurite.account_url}/{container}/cats/chelsea%20one.png"

    from_url = vectorize({"imageUrl": url})
    from_binary = vectorize(binary())
    assert from_url["errors"] is None and from_url["data"]["vector"] == from_binary["data"]["vector"]

    missing = vectorize({"imageUrl": f"{azurite.account_url}/{container}/nope.png"})
    assert (
        missing["errors"] == [{"message": f"blob {container}/nope.png of {azurite.account_url} does not exist"}]
        and missing["data"] == {}
    )
    # Same host, another account's path; an SAS on the URL; another host: never fetched.
    for foreign in (
        url.replace("/devstoreaccount1/", "/otheraccount/"),
        url + "?sv=2024-01-01&sig=x",
        url.replace("127.0.0.1", "localhost"),
    ):
        refused = vectorize({"imageUrl": foreign})
        assert refused["data"] == {} and refused["errors"][0]["message"].startswith(
            "imageUrl is not a blob of a storage account this app reads"
        )


def test_the_vectorizer_keeps_the_embedded_version_until_re_enrichment_has_finished(
    settings: Settings, store: BlobModelStore, served: Any, tmp_path: Path
) -> None:
    service, clock = served
    v1, v2 = tiny_bundle(tmp_path / "v1", crop=32), tiny_bundle(tmp_path / "v2", crop=64, seed=3)
    expected = {"v1": own_vector(v1), "v2": own_vector(v2)}
    assert not np.allclose(expected["v1"], expected["v2"])  # the two versions embed the photo differently

    store.publish(v1, version="v1")
    write_reindex_record(store, version="v1", mode="baseline", expected=None)  # the index holds v1's vectors
    assert vectorize(binary())["data"]["vector"] == expected["v1"]

    # v2 becomes current and every instance serves it; re-enrichment has started but not finished.
    store.publish(v2, version="v2")
    service.holder.poll_now()
    assert service.holder.current().version == "v2"
    record = read_reindex_record(store)
    assert record is not None
    record = write_reindex_record(store, version="v2", mode="full", expected=record, embedded="v1")
    clock.t += 61  # past MODEL_POLL_SECONDS: the record is read again
    assert vectorize(binary())["data"]["vector"] == expected["v1"]
    assert service.vector_model().version == "v1"

    # The indexer's run ended with success: a pass records it (shared.search.reindex), and the vectorizer
    # switches at its next read of the record.
    write_reindex_record(store, version="v2", mode="full", expected=record, embedded="v2")
    assert vectorize(binary())["data"]["vector"] == expected["v1"]  # read at most every MODEL_POLL_SECONDS
    clock.t += 61
    assert vectorize(binary())["data"]["vector"] == expected["v2"]
    assert service.vector_model().version == "v2" and service._pinned is None


def test_without_a_record_the_vectorizer_follows_the_current_model(
    store: BlobModelStore, served: Any, tmp_path: Path
) -> None:
    v1 = tiny_bundle(tmp_path / "v1", crop=32)
    store.publish(v1, version="v1")
    assert vectorize(binary())["data"]["vector"] == own_vector(v1)


def test_an_embedded_version_that_cannot_be_loaded_answers_503(
    store: BlobModelStore, served: Any, tmp_path: Path
) -> None:
    store.publish(tiny_bundle(tmp_path / "v1", crop=32), version="v1")
    write_reindex_record(store, version="gone", mode="baseline", expected=None)
    body = json.dumps({"values": [{"recordId": "q", "data": binary()}]}).encode()
    response = VectorizeImage.main(func.HttpRequest(method="POST", url="/api/vectorize", body=body, params={}))
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"
    message = json.loads(response.get_body())["error"]["message"]
    assert message.startswith("the index's vectors come from model gone, which cannot be loaded here (version gone")
