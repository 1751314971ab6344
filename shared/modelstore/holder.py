"""The process's current model: loaded on first use, replaced by newly published versions, never half-loaded.

A ModelSource (shared.modelstore.source) says where models come from: a fixed folder (AZUREML_MODEL_DIR or the bundled
sample) or the Blob model store. The holder loads the source's model on the first request or health check;
with the store, it then checks the pointer at most every MODEL_POLL_SECONDS in a background thread, so
requests never wait for the store. A new version is loaded and smoke-tested beside the old one and swapped
in with one assignment; in-flight requests finish on the model they started with. Any failure keeps the
old model serving; it is logged once per distinct message and retried at the next poll. The source is told
which versions loaded (so a cold start during an outage serves only one of those) and which failed (so a
broken version is not downloaded again at every poll).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from shared.core.errors import AppError, ModelNotReady
from shared.modelstore.errors import SourceUnreachable
from shared.modelstore.pointer import utc_now
from shared.modelstore.source import Fetched, ModelSource

logger = logging.getLogger(__name__)


class Servable(Protocol):
    """What the holder needs of a loaded model (shared.inference.model.Model has it): its version for the
    swap, and what health reports."""

    version: str
    task: str
    labels: tuple[str, ...]


M = TypeVar("M", bound=Servable)


@dataclass(frozen=True)
class LoadedModel(Generic[M]):
    model: M
    origin: str
    token: str | None
    loaded_at: str


# How long a health check waits for a poll that is already running (it was due, or the health check itself
# started it) before answering with the poll shown as in progress: long enough for a pointer read and a
# small model's download, short enough that a hung store cannot hold health checks for its 60 s timeout.
STATUS_WAIT_S = 5.0


class ModelHolder(Generic[M]):
    """Holds one loaded model and keeps it current.

    `current()` returns the model, loading it first if there is none (one loader at a time; other callers
    wait), or raises ModelNotReady with a Retry-After when nothing can be loaded; a failed first load is
    retried at most every `retry_s` seconds, and for a polling source (the store) at most every `poll_s`
    when that is sooner, so a first model published after start is picked up within one poll interval.
    """

    def __init__(
        self,
        source: ModelSource,
        load: Callable[[Path], M],
        *,
        poll_s: float = 60.0,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
        status_wait_s: float = STATUS_WAIT_S,
    ) -> None:
        self.source = source
        self._load = load
        self._poll_s = poll_s
        self._retry_s = min(retry_s, poll_s) if source.polls else retry_s
        self._clock = clock
        self._background = background
        self._status_wait_s = status_wait_s
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._poll_done = threading.Condition()
        self._poll_started: float | None = None
        self._model: LoadedModel[M] | None = None
        self._last_error: str | None = None
        self._logged_error: str | None = None
        self._next_attempt = 0.0
        self._next_poll = 0.0
        self._last_check: str | None = None
        self._store_reachable: bool | None = None

    def current(self) -> M:
        model = self._model
        if model is not None:
            self._maybe_poll()
            return model.model
        with self._lock:
            if self._model is not None:
                return self._model.model
            if self._last_error is not None and self._clock() < self._next_attempt:
                raise ModelNotReady(self._not_ready_message(), retry_after_s=self._retry_after())
            self._tracked_refresh()
            if self._model is None:
                self._next_attempt = self._clock() + self._retry_s
                raise ModelNotReady(self._not_ready_message(), retry_after_s=self._retry_after())
            return self._model.model

    def poll_now(self) -> None:
        """Check the source once, synchronously (the CLI and tests; requests use the background poll)."""
        with self._poll_lock:
            self._tracked_refresh()

    def poll_due(self) -> bool:
        """True when the last check started MODEL_POLL_SECONDS ago or more (and none is running)."""
        return self.source.polls and self._clock() >= self._next_poll and not self._poll_lock.locked()

    def _maybe_poll(self) -> None:
        if not self.poll_due():
            return
        if not self._poll_lock.acquire(blocking=False):
            return
        self._next_poll = self._clock() + self._poll_s
        self._poll_started = self._clock()
        if not self._background:
            try:
                self._tracked_refresh()
            finally:
                self._poll_lock.release()
            return

        def run() -> None:
            try:
                self._tracked_refresh()
            finally:
                self._poll_lock.release()

        threading.Thread(target=run, name="model-poll", daemon=True).start()

    def _tracked_refresh(self) -> None:
        """_refresh, with the poll's start visible to status() while it runs."""
        with self._poll_done:
            if self._poll_started is None:
                self._poll_started = self._clock()
        try:
            self._refresh()
        finally:
            with self._poll_done:
                self._poll_started = None
                self._poll_done.notify_all()

    def _refresh(self) -> None:
        """Fetch from the source; load, check and swap in anything new. Never raises."""
        current = self._model
        self._next_poll = self._clock() + self._poll_s
        fetched: Fetched | None = None
        try:
            fetched = self.source.fetch(current.token if current else None)
            self._last_check = utc_now()
            self._store_reachable = (fetched is None or fetched.unreachable is None) if self.source.polls else None
            if fetched is None:
                self._last_error = None
                return
            if current is not None and fetched.version is not None and fetched.version == current.model.version:
                self._model = LoadedModel(current.model, current.origin, fetched.token, current.loaded_at)
                self._settled(fetched)
                return
            # Load the new model before letting go of the old one: at least one is always available.
            try:
                loaded = self._load(fetched.path)
                if fetched.version is not None and loaded.version != fetched.version:
                    raise AppError(
                        f"the folder for version {fetched.version} holds a manifest for {loaded.version}; refusing it"
                    )
            except AppError as exc:
                self.source.rejected(fetched, str(exc))
                raise
        except SourceUnreachable as exc:
            self._last_check = utc_now()
            self._store_reachable = False
            self._fail(str(exc))
            return
        except AppError as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # a bug in loading must not take the serving model down with it
            logger.exception("model refresh crashed")
            self._fail(f"model refresh failed ({exc.__class__.__name__})")
            return
        self._model = LoadedModel(model=loaded, origin=fetched.origin, token=fetched.token, loaded_at=utc_now())
        if current is None:
            logger.info("model %s loaded from %s", loaded.version, fetched.origin)
        else:
            logger.info("model %s replaced %s (from %s)", loaded.version, current.model.version, fetched.origin)
        self._settled(fetched)

    def _settled(self, fetched: Fetched) -> None:
        """The model of `fetched` is serving: tell the source, and report an outage if it came from a cache."""
        if fetched.unreachable is not None:
            self._fail(fetched.unreachable)
            return
        self.source.served(fetched)
        self._last_error = None
        self._logged_error = None

    def _fail(self, message: str) -> None:
        if message != self._logged_error:
            if self._model is None:
                logger.error("model not loaded: %s", message)
            else:
                logger.error("model %s keeps serving: %s", self._model.model.version, message)
            self._logged_error = message
        self._last_error = message

    def _retry_after(self) -> int:
        return max(1, round(self._next_attempt - self._clock()))

    def _not_ready_message(self) -> str:
        return f"no model is loaded yet: {self._last_error}"

    def _wait_for_running_poll(self) -> None:
        """Wait for a running poll, at most until it is `status_wait_s` old."""
        with self._poll_done:
            started = self._poll_started
            if started is None:
                return
            remaining = self._status_wait_s - (self._clock() - started)
            if remaining > 0:
                self._poll_done.wait_for(lambda: self._poll_started is None, timeout=remaining)

    def status(self) -> dict[str, Any]:
        """Readiness as data: version, task, labels, source, loaded-at, last check, last error, and for the
        store whether it answered and whether a poll is running (and for how many seconds).

        A poll that is running is waited for up to `status_wait_s` from its start, so the first health
        check after a due poll shows what that poll found; a hung store shows as a poll in progress.
        """
        if self.source.polls:
            self._wait_for_running_poll()
        model = self._model
        out: dict[str, Any] = {
            "ready": model is not None,
            "source": self.source.description,
            "lastCheck": self._last_check,
            "lastError": self._last_error,
        }
        if self.source.polls:
            out["store"] = {None: "unknown", True: "reachable", False: "unreachable"}[self._store_reachable]
            started = self._poll_started
            out["poll"] = {
                "inProgress": started is not None,
                "startedSecondsAgo": round(self._clock() - started) if started is not None else None,
            }
        if model is not None:
            out.update(
                version=model.model.version,
                task=model.model.task,
                labels=len(model.model.labels),
                loadedFrom=model.origin,
                loadedAt=model.loaded_at,
            )
        return out
