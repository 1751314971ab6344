"""`to-label`: the least confident images of one model version go from the index's source blobs into the labeling
project's folder, against the stand-in search service (tests/searchstub.py) and a real Azurite."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings

from shared.cli import main
from shared.core.settings import Settings
from shared.modelstore.blobstore import BlobModelStore
from shared.search.tolabel import MANIFEST, low_confidence_filter, target_name
from tests.conftest import ROOT
from tests.modelfactory import tiny_bundle
from tests.searchstub import SearchStub

pytestmark = pytest.mark.integration

INDEX = "automl-images-index"
VERSION = "AutoML_9_HD_0"
SAMPLES = ROOT / "samples"


def index_definition() -> dict[str, Any]:
    definition = json.loads((ROOT / "infra" / "search" / "index.json").read_text(encoding="utf-8"))
    definition["name"] = INDEX
    return dict(definition)


class World:
    """An images container with its blobs, the index documents an indexer wrote for them, a labeling container."""

    def __init__(self, azurite: Any, stub: SearchStub) -> None:
        self.service = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.images = self.service.create_container(f"images-{uuid.uuid4().hex[:10]}")
        self.labeling = self.service.create_container(f"labeling-{uuid.uuid4().hex[:10]}")
        self.stub = stub
        self.documents: list[dict[str, Any]] = []
        stub.definitions["indexes"][INDEX] = index_definition()
        stub.add_pipeline(index=INDEX)

    def blob(self, name: str, data: bytes, content_type: str) -> str:
        client = self.images.upload_blob(name, data, content_settings=ContentSettings(content_type=content_type))
        return str(client.url)

    def document(self, name: str, data: bytes, content_type: str, *images: tuple[str | None, float, str],
                 index_type: str | None = None) -> str:  # fmt: skip
        url = self.blob(name, data, content_type)
        self.documents.append(
            {
                "id": hashlib.sha1(url.encode()).hexdigest(),
                "metadata_storage_path": url,
                "metadata_storage_name": name.rsplit("/", 1)[-1],
                "metadata_content_type": index_type or content_type,
                "labels": sorted({label for label, _, _ in images if label}),
                "images": [
                    {"label": label, "confidence": score, "labels": [label] if label else [], "modelVersion": version,
                     "pageNumber": None}
                    for label, score, version in images
                ],
            }
        )
        self.stub.add_documents(INDEX, [self.documents[-1]])
        return url

    def labeling_blobs(self) -> dict[str, bytes]:
        return {b.name: self.labeling.download_blob(b.name).readall() for b in self.labeling.list_blobs()}


@pytest.fixture
def world(azurite: Any, search_stubs: Any) -> World:
    return World(azurite, search_stubs(key="admin-key"))


@pytest.fixture
def env(world: World, azurite: Any, monkeypatch: pytest.MonkeyPatch, blob_settings: Settings) -> dict[str, str]:
    values = {
        "SEARCH_ENDPOINT": world.stub.endpoint,
        "SEARCH_ADMIN_KEY": "admin-key",
        "SEARCH_INDEX_NAME": INDEX,
        "IMAGES_CONNECTION": azurite.connection_string,
        "LABELING_CONNECTION": azurite.connection_string,
        "MODEL_BLOB_CONNECTION_STRING": azurite.connection_string,
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MODEL_BLOB_ACCOUNT_URL", raising=False)
    return values


def photo(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def args(world: World, *extra: str) -> list[str]:
    return [
        "to-label",
        "--target-container", world.labeling.container_name,
        "--target-folder", "incoming/round-2",
        "--target-connection-string-env", "LABELING_CONNECTION",
        "--source-connection-string-env", "IMAGES_CONNECTION",
        *extra,
    ]  # fmt: skip


def searches(stub: SearchStub) -> list[dict[str, Any]]:
    return [r.body for r in stub.requests if r.method == "POST" and "search" in r.path]


def test_the_least_confident_images_go_to_the_folder_with_a_manifest(
    world: World, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    coffee = world.document("a/coffee.png", photo("coffee.png"), "image/png", ("espresso", 0.21, VERSION))
    cat = world.document("b/chelsea.png", photo("chelsea.png"), "image/png", ("tabby", 0.34, VERSION))
    world.document("c/sure.png", photo("coffee.png"), "image/png", ("espresso", 0.97, VERSION))  # sure: not asked
    world.document("d/old.png", photo("chelsea.png"), "image/png", ("tabby", 0.1, "older-version"))
    assert main([*args(world), "--model-version", VERSION, "--top", "5"]) == 0
    # The threshold and the version went to the service as a filter; nothing was filtered after downloading.
    (query,) = searches(world.stub)
    assert query["filter"] == f"images/any(i: i/modelVersion eq '{VERSION}' and i/confidence lt 0.5)"
    blobs = world.labeling_blobs()
    coffee_name = target_name("incoming/round-2", coffee)
    cat_name = target_name("incoming/round-2", cat)
    assert coffee_name.startswith("incoming/round-2/") and coffee_name.endswith(".png")
    assert set(blobs) == {coffee_name, cat_name, f"incoming/round-2/{MANIFEST}"}
    assert blobs[coffee_name] == photo("coffee.png") and blobs[cat_name] == photo("chelsea.png")
    properties = world.labeling.get_blob_client(coffee_name).get_blob_properties()
    assert properties.content_settings.content_type == "image/png"
    manifest = [json.loads(line) for line in blobs[f"incoming/round-2/{MANIFEST}"].decode().splitlines()]
    assert [(m["source"], m["target"], m["confidence"], m["label"], m["modelVersion"]) for m in manifest] == [
        (coffee, coffee_name, 0.21, "espresso", VERSION),
        (cat, cat_name, 0.34, "tabby", VERSION),
    ]
    assert all(m["time"].endswith("Z") for m in manifest)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        f"2 documents have an image below 0.5 for model version {VERSION}; sending the 2 least confident"
    )
    assert out.splitlines()[-1] == (
        f"sent 2 to {world.labeling.container_name}/incoming/round-2; 0 already there, 0 not images, 0 failed"
    )

    # A second run copies nothing and leaves the manifest as it was.
    assert main([*args(world), "--model-version", VERSION]) == 0
    assert world.labeling_blobs() == blobs
    assert capsys.readouterr().out.splitlines()[-1].startswith("sent 0 to ")


def test_only_images_are_sent_and_the_others_are_counted(
    world: World, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    world.document("report.pdf", b"%PDF-1.7\n%...", "application/pdf", ("espresso", 0.2, VERSION))
    world.document("fake.jpg", b"not a JPEG at all", "image/jpeg", ("espresso", 0.3, VERSION))
    world.document("untyped", b"GIF89a...", "application/octet-stream", ("espresso", 0.35, VERSION))
    good = world.document("good.png", photo("coffee.png"), "image/png", ("espresso", 0.4, VERSION))
    assert main([*args(world), "--model-version", VERSION]) == 0
    assert set(world.labeling_blobs()) == {target_name("incoming/round-2", good), f"incoming/round-2/{MANIFEST}"}
    out = capsys.readouterr().out
    assert "report.pdf: not an image (application/pdf)" in out
    assert "fake.jpg: not an image its labeling project takes" in out
    assert out.splitlines()[-1].endswith("sent 1 to " + world.labeling.container_name + "/incoming/round-2; "
                                         "0 already there, 3 not images, 0 failed")  # fmt: skip


def test_dry_run_writes_nothing(world: World, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    url = world.document("a/coffee.png", photo("coffee.png"), "image/png", ("espresso", 0.21, VERSION))
    assert main([*args(world), "--model-version", VERSION, "--dry-run"]) == 0
    assert world.labeling_blobs() == {}
    out = capsys.readouterr().out
    assert f"would send {url} -> {target_name('incoming/round-2', url)} (espresso 0.2100)" in out
    assert "dry run: would send 1 to" in out and "nothing written" in out


def test_top_label_and_order(world: World, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    for index, score in enumerate((0.45, 0.05, 0.25, 0.15)):
        world.document(f"p{index}.png", photo("coffee.png"), "image/png", ("espresso", score, VERSION))
    world.document("cat.png", photo("chelsea.png"), "image/png", ("tabby", 0.01, VERSION))
    assert main([*args(world), "--model-version", VERSION, "--top", "2", "--label", "espresso"]) == 0
    (query,) = searches(world.stub)
    assert query["filter"] == low_confidence_filter(VERSION, 0.5, "espresso") == (
        f"images/any(i: i/modelVersion eq '{VERSION}' and i/confidence lt 0.5 and i/label eq 'espresso')"
    )
    sent = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sent http")]
    assert [line.split(" ")[1].rsplit("/", 1)[-1] for line in sent] == ["p1.png", "p3.png"]  # 0.05, then 0.15


def test_a_failed_copy_is_one_line_and_the_rest_go_on(
    world: World, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gone = world.document("gone.png", photo("coffee.png"), "image/png", ("espresso", 0.1, VERSION))
    world.images.delete_blob("gone.png")  # indexed, then deleted from the source container
    kept = world.document("kept.png", photo("chelsea.png"), "image/png", ("tabby", 0.2, VERSION))
    assert main([*args(world), "--model-version", VERSION]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"error: {gone}: reading the source blob: ")
    assert set(world.labeling_blobs()) == {target_name("incoming/round-2", kept), f"incoming/round-2/{MANIFEST}"}
    assert out.splitlines()[-1].endswith("0 not images, 1 failed")


def test_the_model_version_defaults_to_the_store_s_current_one(
    world: World, env: dict[str, str], store: BlobModelStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.publish(tiny_bundle(tmp_path / "m", seed=3), version=VERSION)
    world.document("a.png", photo("coffee.png"), "image/png", ("espresso", 0.2, VERSION))
    assert main([*args(world), "--dry-run"]) == 0
    (query,) = searches(world.stub)
    assert f"i/modelVersion eq '{VERSION}'" in query["filter"]


@pytest.mark.parametrize("below", ["1.5", "-0.1", "half", "nan"])
def test_an_out_of_range_threshold_is_a_usage_error(
    world: World, env: dict[str, str], capsys: pytest.CaptureFixture[str], below: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args(world), "--below", below])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m shared to-label" in err and "argument --below:" in err
    assert searches(world.stub) == [] and world.labeling_blobs() == {}


def test_a_missing_target_container_is_one_line(
    world: World, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = args(world, "--model-version", VERSION)
    argv[argv.index("--target-container") + 1] = "no-such-container"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: container no-such-container does not exist in ") and err.count("\n") == 1
