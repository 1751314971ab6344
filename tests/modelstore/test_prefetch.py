"""The cold-start prefetch (shared/modelstore/prefetch.py): the Blob store's current version downloaded beside
start-up with azure-storage-blob, and served by the service without asking the store again."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared.core.settings import Settings
from shared.modelstore import prefetch
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.reads import store_cache_dir
from shared.skill.service import SkillService
from tests.azurite import ACCOUNT, DEV_KEY
from tests.conftest import ROOT
from tests.modelfactory import as_stored, tiny_bundle


def store_for(settings: Settings) -> BlobModelStore:
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    return store


@pytest.mark.integration
def test_the_service_takes_the_prefetched_version(blob_settings: Settings, tmp_path: Path) -> None:
    store_for(blob_settings).publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    assert blob_settings.cache_dir is not None and not blob_settings.cache_dir.exists()
    assert prefetch.start(blob_settings) is True
    assert prefetch.start(blob_settings) is False  # one per process, even once taken
    pending = prefetch._pending
    assert pending is not None and pending.done.wait(timeout=60)
    store = store_for(blob_settings)
    cached = store_cache_dir(blob_settings.cache_dir, store.description) / "v1"
    assert (cached / "manifest.json").is_file()  # downloaded before any service exists, where it looks
    # The store loses v1's files: the service can only serve it from what the prefetch downloaded.
    for blob in list(store.container.list_blobs(name_starts_with="v1/")):
        store.container.delete_blob(blob.name)
    service = SkillService(blob_settings)
    assert prefetch._pending is None
    assert prefetch.start(blob_settings) is False
    assert service.holder.current().version == "v1"
    assert service.holder.status()["lastError"] is None


@pytest.mark.integration
def test_a_prefetch_for_other_settings_is_not_waited_for(blob_settings: Settings) -> None:
    assert prefetch.start(blob_settings) is True
    pending = prefetch._pending
    assert pending is not None
    assert prefetch.take(dataclasses.replace(blob_settings, blob_container="other")) is None
    assert prefetch._pending is None
    pending.done.wait(timeout=30)


@pytest.mark.integration
def test_an_unreachable_store_costs_one_attempt(tmp_path: Path) -> None:
    # A loopback listener that hangs up on every connection, counting them.
    listener = socket.create_server(("127.0.0.1", 0))
    attempts = []

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            attempts.append(1)
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    port = listener.getsockname()[1]
    settings = Settings(
        blob_connection_string=(
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        ),
        cache_dir=tmp_path / "cache",
    )
    try:
        assert prefetch.start(settings) is True
        pending = prefetch._pending
        assert pending is not None and pending.done.wait(timeout=60)
        assert len(attempts) == 1  # the store's own client would try 3 times, 1 s apart
        status, body, _ = SkillService(settings).classify(b'{"values": []}', {})
        assert status == 503 and "is unreachable while reading current.json" in json.loads(body)["error"]["message"]
        assert len(attempts) == 4  # the holder's first fetch: its own 3 attempts, reported as usual
    finally:
        listener.close()


@pytest.mark.parametrize(
    "env",
    [
        {"MODEL_POLL_SECONDS": "often"},
        {"MODEL_BLOB_ACCOUNT_URL": "http://example.com/acct"},
        {
            "MODEL_BLOB_CONNECTION_STRING": f"AccountName={ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint=http://example.com/a"
        },
    ],
    ids=["bad-poll-period", "http-account-url", "http-connection-string"],
)
def test_nothing_to_prefetch_without_a_store_or_with_bad_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    assert prefetch.start(Settings()) is False
    assert prefetch._pending is None and prefetch._started is False
    for name in list(os.environ):
        if name.startswith(("MODEL_", "AZURE_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert prefetch.start() is False  # the service reports the bad setting when it starts
    assert prefetch._pending is None


@pytest.mark.integration
def test_the_holder_reports_what_the_prefetch_could_not_do(blob_settings: Settings) -> None:
    store = store_for(blob_settings)
    store.ensure_container()
    assert prefetch.start(blob_settings) is True
    status, body, _ = SkillService(blob_settings).classify(b'{"values": []}', {})
    assert status == 503
    assert json.loads(body)["error"]["message"] == (
        f"no model is loaded yet: no model is published in {store.description} yet: run `python -m shared publish "
        "PATH` or let RefreshModel publish one"
    )


@pytest.mark.integration
def test_the_prefetch_reads_what_the_store_reads(blob_settings: Settings, tmp_path: Path) -> None:
    store = store_for(blob_settings)
    store.publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    assert prefetch.start(blob_settings) is True
    found = prefetch.take(blob_settings)
    assert found is not None and found.description == store.description
    # The same ETag too: the first poll's conditional read uses it.
    assert found.pointer == store.read_pointer()
    assert blob_settings.cache_dir is not None
    assert found.path == store_cache_dir(blob_settings.cache_dir, store.description) / "v1"
    for name in ("model.onnx", "labels.json"):
        assert (found.path / name).read_bytes() == as_stored(tmp_path / "tiny" / name)
    assert prefetch.take(blob_settings) is None  # taken once
    assert store.read_blob("v9/manifest.json", "reading") is None  # what the prefetch's reads take for "absent"


COLD_START = """
import json, sys
from shared.modelstore import prefetch
assert prefetch.start()
imported = "azure.storage.blob" in sys.modules
from shared.skill.service import SkillService
from shared.core.settings import Settings
service = SkillService(Settings.from_env())
status, body, _ = service.classify(open(sys.argv[1], "rb").read(), {})
first = {"status": status, "imported_by_start": imported, "health": service.holder.status()}
service.holder.poll_now()
print(json.dumps(first | {"after_poll": service.holder.status()}))
"""


@pytest.mark.integration
def test_a_cold_start_serves_the_prefetched_version_and_its_first_poll_finds_it_unchanged(
    blob_settings: Settings, tmp_path: Path
) -> None:
    store_for(blob_settings).publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"values": []}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AZURE_", "SKILL_"))}
    env |= {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string or "",
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [sys.executable, "-c", COLD_START, str(body)]
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    # start() imports the SDK on the caller's thread, before the caller's own imports.
    assert seen["status"] == 200 and seen["imported_by_start"] is True
    assert seen["health"]["version"] == "v1" and seen["health"]["store"] == "reachable"
    assert seen["health"]["lastError"] is None
    # The first poll asks with the prefetch's ETag: nothing changed, nothing reloaded.
    after = seen["after_poll"]
    assert after["version"] == "v1" and after["store"] == "reachable" and after["lastError"] is None
    assert after["loadedAt"] == seen["health"]["loadedAt"]
