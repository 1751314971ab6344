"""The process's current model: loaded on first use, kept while it serves, never half-loaded."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.engine import Engine
from shared.errors import ClassifierError, ModelNotReady

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LoadedModel:
    engine: Engine
    source: str
    loaded_at: str


class ModelHolder:
    """Holds one loaded Engine.

    `current()` returns it, loading it first if needed (one loader at a time; other callers wait), or
    raises ModelNotReady when loading failed; a failed load is retried at most every `retry_s` seconds
    and its error is logged once per distinct message.
    """

    def __init__(
        self,
        load: Callable[[], Engine],
        source: str,
        *,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._source = source
        self._retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._last_error: str | None = None
        self._next_attempt = 0.0

    def current(self) -> Engine:
        model = self._model
        if model is not None:
            return model.engine
        with self._lock:
            if self._model is not None:
                return self._model.engine
            if self._last_error is not None and self._clock() < self._next_attempt:
                raise ModelNotReady(self._not_ready_message(), retry_after_s=self._retry_after())
            try:
                engine = self._load()
            except ClassifierError as exc:
                self._fail(str(exc))
                raise ModelNotReady(self._not_ready_message(), retry_after_s=self._retry_after()) from None
            except Exception as exc:  # a loader bug must not take the process down
                logger.exception("model load crashed")
                self._fail(f"model load failed ({exc.__class__.__name__})")
                raise ModelNotReady(self._not_ready_message(), retry_after_s=self._retry_after()) from None
            self._model = LoadedModel(engine=engine, source=self._source, loaded_at=utc_now())
            self._last_error = None
            logger.info("model %s loaded from %s", engine.version, self._source)
            return engine

    def _fail(self, message: str) -> None:
        if message != self._last_error:
            logger.error("model not loaded: %s", message)
        self._last_error = message
        self._next_attempt = self._clock() + self._retry_s

    def _retry_after(self) -> int:
        return max(1, round(self._next_attempt - self._clock()))

    def _not_ready_message(self) -> str:
        return f"no model is loaded yet: {self._last_error}"

    def status(self) -> dict[str, Any]:
        """Readiness as data: version, task, labels, source, loaded-at, last error."""
        model = self._model
        out: dict[str, Any] = {"ready": model is not None, "source": self._source, "lastError": self._last_error}
        if model is not None:
            out.update(
                version=model.engine.version,
                task=model.engine.task,
                labels=len(model.engine.labels),
                loadedAt=model.loaded_at,
            )
        return out
