"""The Blob model store and hot swap, against a real Azurite."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.core.settings import Settings
from shared.modelstore.blobstore import BlobModelStore, client_options
from shared.modelstore.errors import StoreConflict, StoreError, VersionCorrupt
from shared.modelstore.pointer import Pointer
from shared.modelstore.reads import PARTIAL_PREFIX, clean_partials, store_cache_dir
from shared.skill.service import SkillService
from tests.azurite import Azurite
from tests.conftest import ROOT, SAMPLES, encode
from tests.modelfactory import as_stored, tiny_bundle

PHOTO = encode(__import__("PIL.Image", fromlist=["Image"]).open(SAMPLES / "coffee.png").resize((96, 64)), "PNG")
BODY = json.dumps({"values": [{"recordId": "1", "data": {"image": base64.b64encode(PHOTO).decode()}}]}).encode()


def never(current: Pointer | None, manifest: dict[str, Any]) -> bool:
    return False


@pytest.fixture
def bundles(tmp_path: Path) -> list[Path]:
    return [tiny_bundle(tmp_path / f"b{i}", seed=i) for i in range(4)]


def cached(settings: Settings, store: BlobModelStore) -> Path:
    """The cache folder of this store's versions."""
    assert settings.cache_dir is not None
    return store_cache_dir(settings.cache_dir, store.description)


def served_version(service: SkillService) -> str:
    status, body, _ = service.classify(BODY, {})
    assert status == 200, body
    version: str = json.loads(body)["values"][0]["data"]["modelVersion"]
    return version


def test_publish_writes_files_then_manifest_then_pointer(store: BlobModelStore, bundles: list[Path]) -> None:
    result = store.publish(bundles[0], version="v1")
    assert (result.version, result.uploaded, result.promoted, result.previous) == ("v1", True, True, None)
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer) and pointer.version == "v1"
    names = sorted(b.name for b in store.container.list_blobs())
    assert names == ["current.json", "v1/labels.json", "v1/manifest.json", "v1/model.onnx"]
    manifest, sha = store.read_manifest("v1") or ({}, "")
    assert pointer.manifest_sha256 == sha
    assert set(manifest["files"]) == {"model.onnx", "labels.json"}
    assert manifest["task"] == "multiclass" and manifest["preprocessing"]["crop"] == 32
    # The same content again uploads nothing; other content under the same name is refused.
    again = store.publish(bundles[0], version="v1")
    assert (again.uploaded, again.promoted) == (False, False)
    with pytest.raises(
        StoreError, match=r"version v1 already exists in .* with different files; versions are immutable"
    ):
        store.publish(bundles[1], version="v1")


def test_default_version_is_a_content_hash_and_stable(store: BlobModelStore, bundles: list[Path]) -> None:
    first = store.publish(bundles[0]).version
    assert first.startswith("m-") and len(first) == 14
    assert store.publish(bundles[0]).version == first
    assert store.publish(bundles[1]).version != first


def test_versions_lists_complete_and_incomplete_and_promote_moves_the_pointer(
    store: BlobModelStore, bundles: list[Path]
) -> None:
    store.publish(bundles[0], version="v1")
    store.publish(bundles[1], version="v2")
    store.container.upload_blob("v3/model.onnx", b"half an upload")
    infos = {i.version: i for i in store.list_versions()}
    assert set(infos) == {"v1", "v2", "v3"}
    assert infos["v1"].complete and infos["v2"].complete and not infos["v3"].complete
    assert store.promote("v1").previous == "v2"
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer) and pointer.version == "v1"
    with pytest.raises(StoreError, match=r"version v3 is not in .* its upload never finished"):
        store.promote("v3")


def test_pointer_write_is_conditional(store: BlobModelStore, bundles: list[Path]) -> None:
    store.publish(bundles[0], version="v1")
    stale = store.read_pointer()
    assert isinstance(stale, Pointer)
    store.publish(bundles[1], version="v2")
    with pytest.raises(StoreConflict):
        store._write_pointer("v1", stale.manifest_sha256, None, stale)
    with pytest.raises(StoreConflict):  # creating when one exists: If-None-Match: *
        store._write_pointer("v1", stale.manifest_sha256, None, None)
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer) and pointer.version == "v2"
    assert store.read_pointer(pointer.etag) is not pointer and not isinstance(store.read_pointer(pointer.etag), Pointer)


def test_cold_start_with_an_empty_cache_serves_the_published_version(
    store: BlobModelStore, bundles: list[Path], blob_settings: Settings
) -> None:
    store.publish(bundles[0], version="v1")
    assert blob_settings.cache_dir is not None and not blob_settings.cache_dir.exists()
    service = SkillService(blob_settings)
    assert served_version(service) == "v1"
    assert [p.name for p in blob_settings.cache_dir.iterdir()] == [store_cache_dir(Path(), store.description).name]
    assert sorted(p.name for p in cached(blob_settings, store).iterdir() if not p.name.startswith(".")) == ["v1"]
    status = service.holder.status()
    assert status["version"] == "v1" and status["store"] == "reachable" and status["lastError"] is None
    assert status["loadedFrom"].endswith("(v1)")


def test_nothing_published_is_503_with_a_clear_message(blob_settings: Settings, store: BlobModelStore) -> None:
    store.ensure_container()
    status, body, headers = SkillService(blob_settings).classify(BODY, {})
    # Retried within MODEL_POLL_SECONDS (1 s here), not a fixed 30 s: a first model published after start
    # is picked up as soon as any other version would be.
    assert status == 503 and headers["Retry-After"] == "1"
    assert json.loads(body)["error"]["message"] == (
        f"no model is loaded yet: no model is published in {store.description} yet: run `python -m shared publish "
        "PATH` or let RefreshModel publish one"
    )


def test_a_new_version_is_picked_up_by_the_dev_server_without_a_failed_request(
    store: BlobModelStore, bundles: list[Path], dev_server: tuple[str, SkillService], blob_settings: Settings
) -> None:
    import urllib.error
    import urllib.request

    url, _ = dev_server
    store.publish(bundles[0], version="v1")
    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and len(answers) < 2000:
            request = urllib.request.Request(f"{url}/api/classify", data=BODY, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    version = json.loads(response.read())["values"][0]["data"]["modelVersion"]
                    answers.append((time.monotonic(), response.status, version))
            except urllib.error.HTTPError as error:
                answers.append((time.monotonic(), error.code, None))
            time.sleep(0.02)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not any(v == "v1" for _, _, v in answers) and time.monotonic() < deadline:
        time.sleep(0.05)
    published_at = time.monotonic()
    store.publish(bundles[1], version="v2")
    limit = blob_settings.poll_s + 5
    while not any(v == "v2" for _, _, v in answers) and time.monotonic() < published_at + limit + 5:
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=30)

    assert [a for a in answers if a[1] != 200] == []
    switched = min(t for t, _, v in answers if v == "v2")
    assert switched - published_at <= limit
    after = [v for t, _, v in answers if t > switched]
    assert after and set(after) == {"v2"}
    assert len(answers) > 10


def test_a_corrupted_version_is_refused_and_the_previous_one_keeps_serving(
    store: BlobModelStore, bundles: list[Path], blob_settings: Settings
) -> None:
    store.publish(bundles[0], version="v1")
    service = SkillService(blob_settings)
    assert served_version(service) == "v1"
    store.publish(bundles[1], version="v2", policy=never)
    store.container.upload_blob("v2/model.onnx", (bundles[2] / "model.onnx").read_bytes(), overwrite=True)
    store.promote("v2")
    service.holder.poll_now()
    status = service.holder.status()
    assert status["version"] == "v1"
    assert status["lastError"].startswith("version v2: model.onnx does not match its manifest (sha256 ")
    assert status["lastError"].endswith("); refusing the version")
    assert served_version(service) == "v1"
    assert sorted(p.name for p in cached(blob_settings, store).iterdir() if not p.name.startswith(".")) == ["v1"]
    assert not list(cached(blob_settings, store).glob(f"{PARTIAL_PREFIX}*"))


def test_a_manifest_that_does_not_match_the_pointer_is_refused(
    store: BlobModelStore, bundles: list[Path], tmp_path: Path
) -> None:
    store.publish(bundles[0], version="v1")
    manifest, _ = store.read_manifest("v1") or ({}, "")
    manifest["task"] = "multilabel"
    store.container.upload_blob("v1/manifest.json", json.dumps(manifest).encode(), overwrite=True)
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer)
    with pytest.raises(VersionCorrupt, match=r"current\.json expects"):
        store.download_version("v1", tmp_path / "cache", pointer.manifest_sha256)
    assert not (tmp_path / "cache" / "v1").exists()


def test_an_interrupted_download_leaves_nothing_loadable(
    store: BlobModelStore, bundles: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish(bundles[0], version="v1")
    cache = tmp_path / "cache"
    real = BlobModelStore.blob_chunks
    calls = []

    def dies_on_the_second_file(self: BlobModelStore, name: str, action: str) -> Iterator[bytes]:
        calls.append(name)
        chunks = real(self, name, action)
        if len(calls) == 2:  # the second file dies after its first bytes
            yield next(chunks)
            raise ConnectionResetError("connection lost mid-download")
        yield from chunks

    monkeypatch.setattr(BlobModelStore, "blob_chunks", dies_on_the_second_file)
    with pytest.raises(ConnectionResetError):
        store.download_version("v1", cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(BlobModelStore, "blob_chunks", real)
    # A partial folder left by a process that died is never loaded, and is cleaned once stale.
    crashed = cache / f"{PARTIAL_PREFIX}v1-deadbeef"
    crashed.mkdir()
    (crashed / "model.onnx").write_bytes(b"half")
    path = store.download_version("v1", cache)
    assert path == cache / "v1" and (path / "manifest.json").is_file()
    clean_partials(cache, older_than_s=0)
    assert sorted(p.name for p in cache.iterdir()) == ["v1"]


def test_two_publishers_racing_end_at_one_complete_version(
    store: BlobModelStore, bundles: list[Path], tmp_path: Path
) -> None:
    store.ensure_container()
    errors: list[BaseException] = []

    def publisher(index: int) -> None:
        for round_ in range(3):
            try:
                store.publish(bundles[index], version=f"p{index}-r{round_}")
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer) and pointer.version in {f"p{i}-r2" for i in range(2)} | {
        f"p{i}-r{r}" for i in range(2) for r in range(3)
    }
    _, sha = store.read_manifest(pointer.version) or ({}, "")
    assert sha == pointer.manifest_sha256
    folder = store.download_version(pointer.version, tmp_path / "cache", pointer.manifest_sha256)
    index = int(pointer.version[1])
    assert (folder / "model.onnx").read_bytes() == as_stored(bundles[index] / "model.onnx")


def test_store_stopped_the_loaded_model_keeps_serving_and_health_says_so(
    own_azurite: Azurite, bundles: list[Path], tmp_path: Path
) -> None:
    settings = Settings(blob_connection_string=own_azurite.connection_string, cache_dir=tmp_path / "cache", poll_s=1)
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    store.publish(bundles[0], version="v1")
    service = SkillService(settings)
    assert served_version(service) == "v1"
    own_azurite.stop()
    service.holder.poll_now()
    assert served_version(service) == "v1"
    status, body, _ = service.health()
    health = json.loads(body)
    assert status == 200 and health["model"]["version"] == "v1" and health["model"]["store"] == "unreachable"
    assert health["model"]["lastError"].startswith(
        f"model store {store.description} is unreachable while reading current.json ("
    )
    # A cold start while the store is down serves the version this cache served last.
    restarted = SkillService(settings)
    assert served_version(restarted) == "v1"
    assert restarted.holder.status()["loadedFrom"].endswith("(store unreachable)")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AZURE"))} | env
    return subprocess.run(
        [sys.executable, "-m", "shared", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_publish_versions_promote(blob_settings: Settings, bundles: list[Path]) -> None:
    assert blob_settings.blob_connection_string is not None
    env = {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string,
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
    }
    first = cli("publish", str(bundles[0]), "--version", "v1", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "published v1 (uploaded); current.json now points to it\n"
    second = cli("publish", str(bundles[1]), env=env)
    assert second.returncode == 0 and second.stdout.startswith("published m-")
    assert second.stdout.rstrip().endswith("(uploaded); current.json now points to it (was v1)")
    m_name = second.stdout.split()[1]
    listing = cli("versions", env=env)
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("versions in http://127.0.0.1:") and lines[0].endswith("(* = current):")
    assert lines[1].split() == ["version", "created", "metric", "size"]
    marks = {line[2:].split()[0]: line[:2] for line in lines[2:]}
    assert marks == {"v1": "  ", m_name: "* "}
    as_json = [json.loads(line) for line in cli("versions", "--json", env=env).stdout.splitlines()]
    assert {(v["version"], v["current"], v["complete"]) for v in as_json} == {("v1", False, True), (m_name, True, True)}
    assert all(v["bytes"] > 0 and v["created"] for v in as_json)
    assert cli("promote", "v1", env=env).stdout == f"current.json now points to v1 (was {m_name})\n"
    bad = cli("publish", str(ROOT / "samples"), env=env)
    assert bad.returncode == 1 and bad.stdout == "" and bad.stderr.startswith("error: no model.onnx in ")
    assert "Traceback" not in bad.stderr


def test_cli_publish_no_promote_then_promote_and_unknown_versions_list_the_real_ones(
    blob_settings: Settings, bundles: list[Path], store: BlobModelStore
) -> None:
    assert blob_settings.blob_connection_string is not None
    env = {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string,
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
    }
    staged = cli("publish", str(bundles[0]), "--version", "v1", "--no-promote", env=env)
    assert staged.returncode == 0, staged.stderr
    assert staged.stdout == (
        "published v1 (uploaded), not promoted: current.json points to nothing yet; when it is checked, run "
        "`python -m shared promote v1`\n"
    )
    assert store.read_pointer() is None
    assert cli("promote", "v1", env=env).stdout == "current.json now points to v1\n"
    cli("publish", str(bundles[1]), "--version", "v2", "--no-promote", env=env)
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer) and pointer.version == "v1"
    unknown = cli("promote", "v9", env=env)
    assert unknown.returncode == 1 and unknown.stderr == (
        f"error: version v9 is not in {store.description} (or its upload never finished); versions there: v1, v2\n"
    )


def test_the_same_content_has_one_name_in_classify_and_publish_and_is_not_uploaded_twice(
    blob_settings: Settings, bundles: list[Path], store: BlobModelStore
) -> None:
    assert blob_settings.blob_connection_string is not None
    env = {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string,
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
    }
    shown = cli("classify", "--json", "--model", str(bundles[3]), str(SAMPLES / "coffee.png"), env=env)
    name = json.loads(shown.stdout)["modelVersion"]
    assert name.startswith("m-")
    published = cli("publish", str(bundles[3]), env=env)
    assert published.stdout == f"published {name} (uploaded); current.json now points to it\n"
    # Content the store already holds under another name keeps that name when no --version is given.
    store.publish(bundles[2], version="release-7", policy=never)
    again = cli("publish", str(bundles[2]), env=env)
    assert again.stdout == f"published release-7 (already in the store); current.json now points to it (was {name})\n"
    assert sorted(i.version for i in store.list_versions()) == sorted([name, "release-7"])


def test_a_store_whose_container_does_not_exist_yet_has_no_versions_and_the_first_write_creates_it(
    azurite: Azurite, tmp_path: Path, bundles: list[Path]
) -> None:
    env = {"MODEL_BLOB_CONNECTION_STRING": azurite.connection_string, "MODEL_BLOB_CONTAINER": "never-created"}
    description = f"http://127.0.0.1:{azurite.port}/devstoreaccount1/never-created"
    listing = cli("versions", env=env)
    assert (listing.returncode, listing.stderr) == (0, "")
    assert listing.stdout == f"no versions yet in {description}: `python -m shared publish PATH` uploads the first\n"
    assert cli("versions", "--json", env=env).stdout == ""
    promote = cli("promote", "v1", env=env)
    assert promote.stderr == (
        f"error: version v1 is not in {description} (or its upload never finished); it has no complete versions yet\n"
    )
    fresh = {**env, "MODEL_BLOB_CONTAINER": "fresh-for-refresh"}
    refreshed = cli("refresh", "--run-dir", str(bundles[0]), env=fresh)
    assert refreshed.returncode == 0, refreshed.stderr
    assert refreshed.stdout.splitlines()[1].startswith("decision: published and promoted m-")


def test_refresh_run_dir_does_not_convert_a_model_pt_it_will_not_publish(
    blob_settings: Settings, store: BlobModelStore, bundles: list[Path], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from tests.checkpoints import automl_checkpoint

    assert blob_settings.blob_connection_string is not None
    store.publish(bundles[0], version="current-v", metric={"name": "accuracy", "value": 0.95})
    run_dir = tmp_path / "run"
    (run_dir / "train_artifacts").mkdir(parents=True)
    automl_checkpoint(run_dir / "train_artifacts" / "model.pt", "mobilenetv2", ["a", "b"], crop=64, score=0.5)
    env = {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string,
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    kept = cli("refresh", "--run-dir", str(run_dir), env=env)
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines() == [
        f"candidate {run_dir} (accuracy 0.5000); current current-v",
        "decision: kept current: accuracy 0.5000 does not beat current-v's 0.9500 (model.pt not converted)",
    ]
    assert not list(run_dir.rglob("model.onnx")) and not (tmp_path / "cache").exists()


@pytest.mark.integration  # azure-identity tries every credential: seconds
def test_cli_says_one_line_when_no_azure_credential_is_found_and_more_with_verbose() -> None:
    # A closed loopback port: azure-identity tries its credentials, finds none, and the request never leaves.
    env = {"MODEL_BLOB_ACCOUNT_URL": "https://127.0.0.1:9/devstoreaccount1"}
    quiet = cli("versions", env=env)
    assert quiet.returncode == 1 and quiet.stderr == (
        "error: no credential for model store https://127.0.0.1:9/devstoreaccount1/models: in Azure enable the app's "
        "managed identity (AZURE_CLIENT_ID for a user-assigned one), locally `az login`, or set "
        "MODEL_BLOB_CONNECTION_STRING\n"
    )
    verbose = cli("--verbose", "versions", env=env)
    assert verbose.returncode == 1 and "DefaultAzureCredential" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.rstrip()


def test_cli_errors_are_one_line(own_azurite: Azurite) -> None:
    env = {"MODEL_BLOB_CONNECTION_STRING": own_azurite.connection_string}
    own_azurite.stop()
    down = cli("versions", env=env)
    assert down.returncode == 1 and len(down.stderr.splitlines()) == 1
    assert down.stderr.startswith(
        f"error: model store http://127.0.0.1:{own_azurite.port}/devstoreaccount1/models is unreachable while "
    )
    assert "Eby8" not in down.stderr
    none = cli("versions", env={})
    assert none.returncode == 1 and none.stderr == (
        "error: no model store is configured: set MODEL_BLOB_CONNECTION_STRING (Azurite, development) or "
        "MODEL_BLOB_ACCOUNT_URL (Azure, with a managed identity or `az login`)\n"
    )


@pytest.mark.integration  # azure-identity tries every credential: seconds
def test_missing_credentials_are_one_clear_error() -> None:
    from azure.identity import CredentialUnavailableError
    from azure.storage.blob import ContainerClient

    class NoCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise CredentialUnavailableError("no managed identity endpoint")

        def get_token_info(self, *scopes: str, **kwargs: Any) -> Any:
            raise CredentialUnavailableError("no managed identity endpoint")

    # A closed loopback port: the credential fails before any connection is attempted.
    client = ContainerClient(
        "https://127.0.0.1:9/devstoreaccount1", "models", credential=NoCredential(), **client_options()
    )
    with pytest.raises(StoreError) as caught:
        BlobModelStore(client).read_pointer()
    assert str(caught.value).startswith("no credential for model store https://127.0.0.1:9/devstoreaccount1/models: ")


def unloadable(folder: Path) -> Path:
    """A bundle whose labels do not fit its outputs (3 labels for 4 classes): downloads fine, never loads."""
    bundle = tiny_bundle(folder, seed=7)
    (bundle / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    return bundle


def test_a_cold_start_during_an_outage_serves_the_last_version_that_loaded_not_the_last_downloaded(
    own_azurite: Azurite, bundles: list[Path], tmp_path: Path
) -> None:
    settings = Settings(blob_connection_string=own_azurite.connection_string, cache_dir=tmp_path / "cache", poll_s=1)
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    store.publish(bundles[0], version="v1")
    service = SkillService(settings)
    assert served_version(service) == "v1"
    store.publish(unloadable(tmp_path / "broken"), version="v2")
    service.holder.poll_now()
    assert service.holder.status()["version"] == "v1"
    assert service.holder.status()["lastError"].startswith(f"{cached(settings, store) / 'v2'}")
    assert (cached(settings, store) / "v2" / "manifest.json").is_file()  # downloaded, verified, never loaded
    own_azurite.stop()
    restarted = SkillService(settings)
    assert served_version(restarted) == "v1"
    status, body, _ = restarted.health()
    health = json.loads(body)["model"]
    assert status == 200 and health["version"] == "v1" and health["store"] == "unreachable"
    assert health["loadedFrom"] == f"cache {cached(settings, store) / 'v1'} (store unreachable)"
    assert health["lastError"].startswith(
        f"model store {store.description} is unreachable while reading current.json ("
    )


def test_a_broken_version_is_downloaded_once_and_skipped_until_the_pointer_moves(
    store: BlobModelStore,
    bundles: list[Path],
    blob_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store.publish(bundles[0], version="v1")
    service = SkillService(blob_settings)
    assert served_version(service) == "v1"
    downloads: list[str] = []
    real = BlobModelStore.blob_chunks

    def counted(self: BlobModelStore, name: str, action: str) -> Iterator[bytes]:
        downloads.append(name)
        yield from real(self, name, action)

    monkeypatch.setattr(BlobModelStore, "blob_chunks", counted)
    store.publish(unloadable(tmp_path / "broken"), version="v2")
    cache = cached(blob_settings, store)
    with caplog.at_level("ERROR", logger="shared.modelstore.holder"):
        for _ in range(5):
            service.holder.poll_now()
            # The cache may be emptied meanwhile (a new instance); the refusal is remembered all the same.
            shutil.rmtree(cache / "v2", ignore_errors=True)
    assert sorted(downloads) == ["v2/labels.json", "v2/model.onnx"]
    assert len([r for r in caplog.records if "keeps serving" in r.getMessage()]) == 1
    status = service.holder.status()
    assert status["version"] == "v1" and status["store"] == "reachable"
    assert "labels" in status["lastError"]
    # A new pointer is looked at again at once.
    store.publish(bundles[1], version="v3")
    service.holder.poll_now()
    assert service.holder.status()["version"] == "v3" and service.holder.status()["lastError"] is None
    assert "v3/model.onnx" in downloads


def test_a_corrupt_version_is_also_skipped_until_the_pointer_moves(
    store: BlobModelStore, bundles: list[Path], blob_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish(bundles[0], version="v1")
    service = SkillService(blob_settings)
    assert served_version(service) == "v1"
    store.publish(bundles[1], version="v2", policy=never)
    store.container.upload_blob("v2/model.onnx", (bundles[2] / "model.onnx").read_bytes(), overwrite=True)
    store.promote("v2")
    reads: list[str] = []
    real = BlobModelStore.read_blob

    def counted(self: BlobModelStore, name: str, action: str) -> Any:
        reads.append(name)
        return real(self, name, action)

    monkeypatch.setattr(BlobModelStore, "read_blob", counted)
    for _ in range(3):
        service.holder.poll_now()
    assert [name for name in reads if name != "current.json"] == ["v2/manifest.json"]
    assert service.holder.status()["lastError"].startswith("version v2: model.onnx does not match its manifest")


def test_the_cache_serves_only_versions_of_the_store_it_came_from(
    own_azurite: Azurite, bundles: list[Path], tmp_path: Path
) -> None:
    fresh = Settings(
        blob_connection_string=own_azurite.connection_string,
        blob_container="fresh",
        cache_dir=tmp_path / "cache",
        poll_s=1,
    )
    store = BlobModelStore.from_settings(fresh)
    assert store is not None
    store.publish(bundles[0], version="v1")
    assert served_version(SkillService(fresh)) == "v1"
    own_azurite.stop()
    models = Settings(
        blob_connection_string=own_azurite.connection_string,
        blob_container="models",
        cache_dir=tmp_path / "cache",
        poll_s=1,
    )
    service = SkillService(models)
    status, body, _ = service.classify(BODY, {})
    assert status == 503
    assert json.loads(body)["error"]["message"].startswith(
        f"no model is loaded yet: model store http://127.0.0.1:{own_azurite.port}/devstoreaccount1/models is "
        "unreachable while reading current.json ("
    )
    assert service.holder.status()["store"] == "unreachable"


def test_the_first_health_check_after_a_promote_shows_the_new_version_when_a_poll_is_due(
    store: BlobModelStore, bundles: list[Path], blob_settings: Settings
) -> None:
    from shared.skill.service import build_holder

    now = [1000.0]
    holder = build_holder(blob_settings)
    holder_with_clock = type(holder)(holder.source, holder._load, poll_s=60, clock=lambda: now[0])
    service = SkillService(blob_settings, holder_with_clock)
    store.publish(bundles[0], version="v1")
    store.publish(bundles[1], version="v2", policy=never)
    assert json.loads(service.health()[1])["model"]["version"] == "v1"
    store.promote("v2")
    now[0] += 59  # not due yet: the version loaded less than MODEL_POLL_SECONDS ago is what health shows
    assert json.loads(service.health()[1])["model"]["version"] == "v1"
    now[0] += 1  # due: the health check starts the poll and waits for it
    health = json.loads(service.health()[1])["model"]
    assert health["version"] == "v2" and health["poll"] == {"inProgress": False, "startedSecondsAgo": None}


def test_uploads_and_downloads_report_their_progress_in_bytes(
    store: BlobModelStore, bundles: list[Path], tmp_path: Path
) -> None:
    sizes = {p.name: len(as_stored(p)) for p in bundles[0].iterdir()}
    uploaded: list[tuple[int, int]] = []
    store.publish(bundles[0], version="v1", progress=lambda n, total: uploaded.append((n, total)))
    assert sum(n for n, _ in uploaded) == sum(sizes.values()) and {t for _, t in uploaded} == {sum(sizes.values())}
    downloaded: list[tuple[int, int]] = []
    store.download_version("v1", tmp_path / "cache", progress=lambda n, total: downloaded.append((n, total)))
    assert sum(n for n, _ in downloaded) == sum(sizes.values())


def test_cli_publish_shows_upload_progress_on_a_terminal_only(blob_settings: Settings, bundles: list[Path]) -> None:
    import fcntl
    import os
    import pty
    import struct
    import termios

    assert blob_settings.blob_connection_string is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AZURE"))} | {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string,
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
    }
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "shared", "publish", str(bundles[0]), "--version", "v1"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    assert process.wait(timeout=120) == 0
    assert "uploading:" in b"".join(chunks).decode()
    assert out == "published v1 (uploaded); current.json now points to it\n"
    # Not a terminal (the other CLI tests): nothing but the result.
    piped = cli("publish", str(bundles[1]), "--version", "v2", env=env)
    assert piped.stderr == ""


@pytest.mark.parametrize("cache", ["/proc/x", "/dev/null/models"])
def test_an_unusable_model_cache_dir_is_one_message_naming_the_setting_and_the_path(
    store: BlobModelStore,
    bundles: list[Path],
    blob_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cache: str,
) -> None:
    """docs/settings.md: a bad value stops the app with a message naming the setting. The service answers 503
    Misconfigured with it (health too), logs it once, and no traceback reaches the log."""
    from shared.skill import service as app

    store.publish(bundles[0], version="v1")
    for name, value in {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string,
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
        "MODEL_CACHE_DIR": cache,
    }.items():
        monkeypatch.setenv(name, str(value))
    app.reset_service(None)
    try:
        for answer in (app.health(), app.classify(BODY, {})):
            status, body, _ = answer
            assert status == 503
            message = json.loads(body)["error"]["message"]
            assert message.startswith(f"setting MODEL_CACHE_DIR={cache!r} cannot be used: cannot create the folder (")
            assert message.endswith("); set it to a writable folder, or leave it empty for the default")
    finally:
        app.reset_service(None)
    assert "Traceback" not in caplog.text and "FileNotFoundError" not in caplog.text
    assert [r.getMessage() for r in caplog.records if "MODEL_CACHE_DIR" in r.getMessage()] == [
        f"app settings are invalid: {message}"
    ]


def test_a_cache_that_breaks_after_start_is_a_store_error_naming_the_folder(
    store: BlobModelStore, bundles: list[Path], tmp_path: Path
) -> None:
    store.publish(bundles[0], version="v1")
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache's folder should be")
    with pytest.raises(StoreError) as raised:
        store.download_version("v1", blocked / "store")
    assert str(raised.value) == (
        f"cannot write the model cache {blocked / 'store'} (Not a directory); set MODEL_CACHE_DIR to a writable folder"
    )
