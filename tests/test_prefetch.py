"""The cold-start prefetch: the Blob store's current version downloaded beside start-up (issue 13)."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.core.settings import Settings
from shared.modelstore import prefetch
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.reads import store_cache_dir
from shared.skill.service import SkillService
from tests.modelfactory import tiny_bundle


@pytest.fixture(autouse=True)
def fresh_process() -> Iterator[None]:
    prefetch._pending, prefetch._started = None, False
    yield
    if prefetch._pending is not None:
        prefetch._pending.done.wait(timeout=30)
    prefetch._pending, prefetch._started = None, False


def store_for(settings: Settings) -> BlobModelStore:
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    return store


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


def test_a_prefetch_for_other_settings_is_not_waited_for(blob_settings: Settings) -> None:
    assert prefetch.start(blob_settings) is True
    pending = prefetch._pending
    assert pending is not None
    assert prefetch.take(dataclasses.replace(blob_settings, blob_container="other")) is None
    assert prefetch._pending is None
    pending.done.wait(timeout=30)


def test_an_unreachable_store_costs_one_attempt(tmp_path: Path) -> None:
    from tests.azurite import ACCOUNT, DEV_KEY

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


def test_nothing_to_prefetch_without_a_store_or_with_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prefetch.start(Settings()) is False
    monkeypatch.setenv("MODEL_POLL_SECONDS", "often")
    assert prefetch.start() is False  # the service reports the bad setting when it starts
    assert prefetch._pending is None


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
