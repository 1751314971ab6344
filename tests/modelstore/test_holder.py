"""The model holder: first load, retries, polling, and what status() reports, with a real engine.

The source is a stand-in shaped like shared.modelstore.source.ModelSource (the Blob store's own behaviour is tested
against Azurite in test_store.py); it lets a test hold a poll open the way a hung store does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from shared.core.errors import AppError, ModelNotReady
from shared.modelstore.holder import ModelHolder
from shared.modelstore.source import Fetched


class ScriptedSource:
    """Answers fetch() from a list of results; `gate` (when set) holds a fetch open until released."""

    description = "scripted"
    polls = True

    def __init__(self, results: list[Fetched | AppError | None]) -> None:
        self.results = results
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.served_versions: list[str | None] = []
        self.rejected_versions: list[str | None] = []

    def fetch(self, token: str | None) -> Fetched | None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, AppError):
            raise result
        return result

    def served(self, fetched: Fetched) -> None:
        self.served_versions.append(fetched.version)

    def rejected(self, fetched: Fetched, message: str) -> None:
        self.rejected_versions.append(fetched.version)


def fetched(version: str) -> Fetched:
    return Fetched(path=Path(version), version=version, token=f"etag-{version}", origin=f"store ({version})")


class Versioned:
    """The sample engine under another version name."""

    def __init__(self, engine: Any, version: str) -> None:
        self._engine = engine
        self.version = version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def test_a_first_model_is_retried_within_the_poll_interval_not_30_s(sample_engine: Any) -> None:
    now = [0.0]
    source = ScriptedSource([AppError("no model is published yet"), fetched("v1")])
    holder = ModelHolder(source, lambda path: Versioned(sample_engine, path.name), poll_s=5, clock=lambda: now[0])
    with pytest.raises(ModelNotReady) as caught:
        holder.current()
    assert caught.value.retry_after_s == 5
    now[0] = 4.9
    with pytest.raises(ModelNotReady):
        holder.current()
    now[0] = 5.0
    assert holder.current().version == "v1"


def test_a_folder_source_keeps_its_30_s_retry(sample_engine: Any) -> None:
    from shared.modelstore.source import FolderSource

    def broken(path: Path) -> Any:
        raise AppError("labels.json is missing")

    holder = ModelHolder(FolderSource(Path("x")), broken, poll_s=5, clock=lambda: 0.0)
    with pytest.raises(ModelNotReady) as caught:
        holder.current()
    assert caught.value.retry_after_s == 30


def test_status_shows_a_hung_poll_in_progress_and_its_age(sample_engine: Any) -> None:
    now = [100.0]
    source = ScriptedSource([fetched("v1")])
    holder = ModelHolder(
        source, lambda path: Versioned(sample_engine, path.name), poll_s=10, clock=lambda: now[0], status_wait_s=0
    )
    assert holder.current().version == "v1"
    assert holder.status()["poll"] == {"inProgress": False, "startedSecondsAgo": None}
    assert holder.status()["store"] == "reachable"
    source.gate = threading.Event()
    source.entered.clear()
    now[0] += 10
    holder.current()  # due: starts the background poll, which hangs like a store that accepts and never answers
    assert source.entered.wait(timeout=10)
    now[0] += 12
    status = holder.status()
    assert status["poll"] == {"inProgress": True, "startedSecondsAgo": 12}
    assert status["version"] == "v1"
    source.gate.set()
    assert holder._poll_lock.acquire(timeout=10)  # the poll thread releases it when it is done
    holder._poll_lock.release()
    assert holder.status()["poll"] == {"inProgress": False, "startedSecondsAgo": None}


def test_status_waits_for_a_running_poll_up_to_its_limit(sample_engine: Any) -> None:
    source = ScriptedSource([fetched("v1"), fetched("v2")])
    holder = ModelHolder(source, lambda path: Versioned(sample_engine, path.name), poll_s=0.0, status_wait_s=30)
    assert holder.current().version == "v1"
    source.gate = threading.Event()
    source.entered.clear()
    holder.current()  # due at once (poll_s 0): the poll starts in the background and waits at the gate
    assert source.entered.wait(timeout=10)
    threading.Timer(0.2, source.gate.set).start()
    assert holder.status()["version"] == "v2"  # status() waited for the poll instead of showing v1


def test_the_source_hears_which_versions_loaded_and_which_were_refused(sample_engine: Any) -> None:
    def load(path: Path) -> Any:
        if path.name == "bad":
            raise AppError("999 labels for 1000 outputs")
        return Versioned(sample_engine, path.name)

    source = ScriptedSource([fetched("v1"), fetched("bad")])
    holder = ModelHolder(source, load, poll_s=60)
    holder.poll_now()
    holder.poll_now()
    assert source.served_versions == ["v1"] and source.rejected_versions == ["bad"]
    assert holder.status()["version"] == "v1" and holder.status()["lastError"] == "999 labels for 1000 outputs"


def test_a_copy_served_during_an_outage_is_reported_as_an_outage(sample_engine: Any) -> None:
    cached = Fetched(
        path=Path("v1"), version="v1", token=None, origin="cache (store unreachable)", unreachable="store is down"
    )
    source = ScriptedSource([cached])
    holder = ModelHolder(source, lambda path: Versioned(sample_engine, path.name), poll_s=60)
    assert holder.current().version == "v1"
    status = holder.status()
    assert status["store"] == "unreachable" and status["lastError"] == "store is down"
    assert source.served_versions == []  # a copy from the cache does not re-mark what the store served
