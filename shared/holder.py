"""The process's current model: loaded on first use, replaced by newly published versions, never half-loaded.

A ModelSource says where models come from: a fixed folder (AZUREML_MODEL_DIR or the bundled sample) or
the Blob model store. The holder loads the source's model on the first request or health check; with the
store, it then checks the pointer at most every MODEL_POLL_SECONDS in a background thread, so requests
never wait for the store. A new version is loaded and smoke-tested beside the old one and swapped in with
one assignment; in-flight requests finish on the engine they started with. Any failure keeps the old model
serving; it is logged once per distinct message and retried at the next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import ClassifierError, ModelNotReady

if TYPE_CHECKING:  # not at run time: the store imports this module, and a cold start's prefetch needs
    # the store without waiting for ONNX Runtime (see shared/prefetch.py)
    from shared.engine import Engine

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Fetched:
    """A verified bundle folder on local disk. `token` is what the source needs to tell later whether
    anything changed (the pointer's ETag); `origin` describes where it came from, for health."""

    path: Path
    version: str | None
    token: str | None
    origin: str


class ModelSource(Protocol):
    description: str
    polls: bool

    def fetch(self, token: str | None) -> Fetched | None:
        """The model to serve, or None when nothing changed since `token`. Raises ClassifierError."""


class FolderSource:
    """A fixed local folder: AZUREML_MODEL_DIR, or the bundled sample."""

    polls = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)

    def fetch(self, token: str | None) -> Fetched | None:
        if token is not None:
            return None
        return Fetched(path=self.path, version=None, token="folder", origin=self.description)


@dataclass(frozen=True)
class LoadedModel:
    engine: Engine
    origin: str
    token: str | None
    loaded_at: str


class ModelHolder:
    """Holds one loaded Engine and keeps it current.

    `current()` returns the engine, loading it first if there is none (one loader at a time; other callers
    wait), or raises ModelNotReady with a Retry-After when nothing can be loaded; a failed first load is
    retried at most every `retry_s` seconds.
    """

    def __init__(
        self,
        source: ModelSource,
        load: Callable[[Path], Engine],
        *,
        poll_s: float = 60.0,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.source = source
        self._load = load
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._clock = clock
        self._background = background
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._last_error: str | None = None
        self._logged_error: str | None = None
        self._next_attempt = 0.0
        self._next_poll = 0.0
        self._last_check: str | None = None
        self._store_reachable: bool | None = None

    def current(self) -> Engine:
        model = self._model
        if model is not None:
            self._maybe_poll()
            return model.engine
        with self._lock:
            if self._model is not None:
                return self._model.engine
            if self._last_error is not None and self._clock() < self._next_attempt:
                raise ModelNotReady(self._not_ready_message(), retry_after_s=self._retry_after())
            self._refresh()
            if self._model is None:
                self._next_attempt = self._clock() + self._retry_s
                raise ModelNotReady(self._not_ready_message(), retry_after_s=self._retry_after())
            return self._model.engine

    def poll_now(self) -> None:
        """Check the source once, synchronously (the CLI and tests; requests use the background poll)."""
        with self._poll_lock:
            self._refresh()

    def _maybe_poll(self) -> None:
        if not self.source.polls or self._clock() < self._next_poll or self._poll_lock.locked():
            return
        if not self._poll_lock.acquire(blocking=False):
            return
        self._next_poll = self._clock() + self._poll_s
        if not self._background:
            try:
                self._refresh()
            finally:
                self._poll_lock.release()
            return

        def run() -> None:
            try:
                self._refresh()
            finally:
                self._poll_lock.release()

        threading.Thread(target=run, name="model-poll", daemon=True).start()

    def _refresh(self) -> None:
        """Fetch from the source; load, check and swap in anything new. Never raises."""
        from shared.store import StoreUnreachable

        current = self._model
        self._next_poll = self._clock() + self._poll_s
        try:
            fetched = self.source.fetch(current.token if current else None)
            self._last_check = utc_now()
            self._store_reachable = True if self.source.polls else None
            if fetched is None:
                self._last_error = None
                return
            if current is not None and fetched.version is not None and fetched.version == current.engine.version:
                self._model = LoadedModel(current.engine, current.origin, fetched.token, current.loaded_at)
                self._last_error = None
                return
            # Load the new model before letting go of the old one: at least one is always available.
            engine = self._load(fetched.path)
            if fetched.version is not None and engine.version != fetched.version:
                raise ClassifierError(
                    f"the folder for version {fetched.version} holds a manifest for {engine.version}; refusing it"
                )
        except StoreUnreachable as exc:
            self._store_reachable = False
            self._fail(str(exc))
            return
        except ClassifierError as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # a bug in loading must not take the serving model down with it
            logger.exception("model refresh crashed")
            self._fail(f"model refresh failed ({exc.__class__.__name__})")
            return
        self._model = LoadedModel(engine=engine, origin=fetched.origin, token=fetched.token, loaded_at=utc_now())
        self._last_error = None
        self._logged_error = None
        if current is None:
            logger.info("model %s loaded from %s", engine.version, fetched.origin)
        else:
            logger.info("model %s replaced %s (from %s)", engine.version, current.engine.version, fetched.origin)

    def _fail(self, message: str) -> None:
        if message != self._logged_error:
            if self._model is None:
                logger.error("model not loaded: %s", message)
            else:
                logger.error("model %s keeps serving: %s", self._model.engine.version, message)
            self._logged_error = message
        self._last_error = message

    def _retry_after(self) -> int:
        return max(1, round(self._next_attempt - self._clock()))

    def _not_ready_message(self) -> str:
        return f"no model is loaded yet: {self._last_error}"

    def status(self) -> dict[str, Any]:
        """Readiness as data: version, task, labels, source, loaded-at, last check, last error."""
        model = self._model
        out: dict[str, Any] = {
            "ready": model is not None,
            "source": self.source.description,
            "lastCheck": self._last_check,
            "lastError": self._last_error,
        }
        if self.source.polls:
            out["store"] = {None: "unknown", True: "reachable", False: "unreachable"}[self._store_reachable]
        if model is not None:
            out.update(
                version=model.engine.version,
                task=model.engine.task,
                labels=len(model.engine.labels),
                loadedFrom=model.origin,
                loadedAt=model.loaded_at,
            )
        return out
