"""`keyframes` end to end: a video made in the test from two photos (three seconds each) goes into a container of a
real Azurite; `python -m shared keyframes` writes its keyframes with their metadata into another; the bundled model,
through the skill as the indexer calls it, labels each keyframe as it labels the photo shown then; the documents an
indexer would write go into the stand-in search service (index created by `search-setup --keyframes`), and
`query --moments` gives one range per label. A second run writes nothing; an undecodable video and a missing
container are one line each."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.cli import main
from shared.cli.search import main_search_setup
from tests.conftest import SAMPLES
from tests.search.test_searchsetup import FUNCTION, FUNCTION_KEY, STORAGE_ID
from tests.searchstub import SearchStub
from tests.videos import indexed_keyframes, skill_answers, video_from_photos

PHOTOS = ("coffee.png", "chelsea.png")


@pytest.fixture
def containers(azurite: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("VIDEO_STORAGE", azurite.connection_string)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    suffix = uuid.uuid4().hex[:10]
    source = service.create_container(f"videos-{suffix}")
    return service, source, f"keyframes-{suffix}"


def keyframes(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["keyframes", "--connection-string-env", "VIDEO_STORAGE", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def snapshot(container: Any) -> dict[str, tuple[str, str]]:
    return {b.name: (b.etag, str(b.last_modified)) for b in container.list_blobs(include=["metadata"])}


def test_video_to_keyframes_to_labels_to_moments(
    containers: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    install_service: Any,
    search_stubs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, source, target_name = containers
    photos = [Image.open(SAMPLES / name).convert("RGB") for name in PHOTOS]
    video = video_from_photos(tmp_path / "two photos.mp4", photos, seconds_each=3)
    source.upload_blob("pets/two photos.mp4", video.read_bytes())
    source.upload_blob("broken.mp4", b"\x00\x00\x00\x18ftypmp42 but nothing a decoder can use" * 20)

    status, out, err = keyframes(capsys, "--source-container", source.container_name, "--target-container", target_name)
    # The broken video is one line naming it, and the other video went on.
    assert status == 1
    assert err.splitlines() == [
        "error: broken.mp4: cannot be read as a video (Invalid data found when processing input)"
    ]
    lines = out.splitlines()
    assert lines[0] == f"created container {target_name}"
    assert lines[1].startswith(
        f"pets/two photos.mp4: 2 keyframes (iframes) written to {target_name}/pets/two photos.mp4/ in "
    )
    assert lines[2] == "2 videos: 1 extracted (2 keyframes), 0 skipped, 1 failed"

    target = service.get_container_client(target_name)
    blobs = {b.name: b for b in target.list_blobs(include=["metadata"])}
    etag = source.get_blob_client("pets/two photos.mp4").get_blob_properties().etag.strip('"')
    assert sorted(blobs) == [
        "pets/two photos.mp4/000000000.jpg",
        "pets/two photos.mp4/000003000.jpg",
        "pets/two photos.mp4/keyframes.json",
    ]
    for ms, index in ((0, 0), (3000, 30)):
        blob = blobs[f"pets/two photos.mp4/{ms:09d}.jpg"]
        assert blob.metadata == {
            "source_video": "pets/two%20photos.mp4",
            "timestamp_ms": f"{ms:09d}",
            "frame_index": str(index),
            "keyframe_mode": "iframes",
            "source_etag": etag,
        }
        assert blob.content_settings.content_type == "image/jpeg"
    assert blobs["pets/two photos.mp4/keyframes.json"].metadata["AzureSearch_Skip"] == "true"

    # Each keyframe gets the label of the photo shown at its timestamp.
    install_service()
    jpegs = [target.download_blob(f"pets/two photos.mp4/{ms:09d}.jpg").readall() for ms in (0, 3000)]
    from tests.conftest import jpeg_bytes

    expected = [d["label"] for d in skill_answers([jpeg_bytes(p.resize((640, 480))) for p in photos])]
    answers = skill_answers(jpegs)
    assert [a["label"] for a in answers] == expected
    assert expected[0] != expected[1]

    # The index the keyframes pipeline creates, filled as the indexer would fill it.
    stub: SearchStub = search_stubs(key="admin-key")
    args = {
        "search_endpoint": stub.endpoint,
        "function_url": FUNCTION,
        "storage_resource_id": STORAGE_ID,
        "container": target_name,
        "prefix": None,
        "auth_resource_id": None,
        "function_key_env": "SKILL_FUNCTION_KEY",
        "key_env": None,
        "dry_run": False,
        "keyframes": True,
    }
    import argparse

    env = {"SKILL_FUNCTION_KEY": FUNCTION_KEY, "SEARCH_ADMIN_KEY": "admin-key"}
    assert main_search_setup(argparse.Namespace(**args), env) == 0
    capsys.readouterr()
    documents = indexed_keyframes(target)
    assert [d["images"][0]["label"] for d in documents] == expected
    stub.add_documents("automl-keyframes-index", documents)
    monkeypatch.setenv("SEARCH_ENDPOINT", stub.endpoint)
    monkeypatch.setenv("SEARCH_ADMIN_KEY", "admin-key")
    monkeypatch.setenv("SEARCH_INDEX_NAME", "automl-keyframes-index")
    for (label, ms), answer in zip(((expected[0], 0), (expected[1], 3000)), answers, strict=True):
        assert main(["query", "--moments", label, "--json"]) == 0
        assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
            {
                "video": "pets/two photos.mp4",
                "label": label,
                "startMs": ms,
                "endMs": ms,
                "maxConfidence": answer["confidence"],
                "frames": 1,
            }
        ]
    assert main(["query", "--moments", expected[1]]) == 0
    assert capsys.readouterr().out == (
        f"pets/two photos.mp4  00:00:03.000-00:00:03.000  {expected[1]}  {answers[1]['confidence']:.2f}\n"
    )
    assert main(["query", "--video", "pets/two photos.mp4", "--count"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "total: 2"

    # A second run writes nothing: the video is skipped, the broken one is reported again.
    before = snapshot(target)
    status, out, err = keyframes(capsys, "--source-container", source.container_name, "--target-container", target_name)
    assert status == 1
    assert out.splitlines() == [
        f"pets/two photos.mp4: skipped (already done at ETag {etag} with iframes)",
        "2 videos: 0 extracted (0 keyframes), 1 skipped, 1 failed",
    ]
    assert err.count("\n") == 1
    assert snapshot(target) == before


def test_interval_mode_gives_ranges_of_consecutive_keyframes(
    containers: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, source, target_name = containers
    photos = [Image.open(SAMPLES / name).convert("RGB") for name in PHOTOS]
    source.upload_blob("two.mp4", video_from_photos(tmp_path / "two.mp4", photos).read_bytes())
    status, out, _ = keyframes(
        capsys,
        "--source-container", source.container_name,
        "--target-container", target_name,
        "--mode", "interval", "--every", "1", "--max-frames", "5",
    )  # fmt: skip
    assert status == 0
    names = sorted(b.name for b in service.get_container_client(target_name).list_blobs())
    assert names == [f"two.mp4/{ms:09d}.jpg" for ms in range(0, 5000, 1000)] + ["two.mp4/keyframes.json"]
    # Other options extract again (the record names them); nothing is deleted.
    status, out, _ = keyframes(capsys, "--source-container", source.container_name, "--target-container", target_name)
    assert status == 0
    assert out.splitlines()[0].startswith("two.mp4: 2 keyframes (iframes) written")
    assert len(list(service.get_container_client(target_name).list_blobs())) == 6


def test_a_missing_container_is_one_line(containers: Any, capsys: pytest.CaptureFixture[str], azurite: Any) -> None:
    status, out, err = keyframes(capsys, "--source-container", "no-such-videos", "--target-container", "kf-missing")
    assert (status, out) == (1, "")
    assert err == (
        f"error: container 'no-such-videos' does not exist in {azurite.account_url}: upload the videos there, "
        "or pass --source-container NAME\n"
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "error: no storage account: pass --connection-string-env NAME"),
        (["--connection-string-env", "NOPE"], {}, "error: environment variable NOPE is not set"),
        (["--account-url", "http://example.com"], {}, "error: account URL 'http://example.com' is invalid"),
        (
            ["--mode", "interval"],
            {"VIDEO_STORAGE": "UseDevelopmentStorage=true"},
            "error: --mode interval needs --every",
        ),
    ],
)
def test_bad_arguments_are_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    extra = ["--connection-string-env", "VIDEO_STORAGE"] if env else []
    assert main(["keyframes", *extra, *args]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(message)
    assert captured.err.count("\n") == 1


def test_the_emulator_shortcut_opens_azurite_whatever_the_storage_sdk_release() -> None:
    """docs/video.md says `UseDevelopmentStorage=true`; azure-storage-blob 12.27.1 (the newest azureml-mlflow allows)
    refuses that shortcut by itself."""
    from shared.video.keyframes import open_service

    service = open_service(connection_string="UseDevelopmentStorage=true")
    assert service.url.rstrip("/") == "http://127.0.0.1:10000/devstoreaccount1"
