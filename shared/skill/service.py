"""The process-wide skill service the function entry points, the dev server and the CLI share."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shared.bundle.layout import SAMPLE_BUNDLE
from shared.core.errors import AppError, HttpError, ModelNotReady
from shared.core.settings import Settings
from shared.inference.factory import load_model
from shared.inference.images import DecodeBudget
from shared.inference.model import ImageOutcome, InferenceOptions, Model, embedding_view
from shared.inference.scheduler import BatchStats, model_threads, run_batch
from shared.modelstore.errors import StoreError
from shared.modelstore.holder import ModelHolder
from shared.modelstore.source import FolderSource, ModelSource
from shared.skill import bodyjson
from shared.skill.contract import error_body, parse_query, parse_request, response_values
from shared.skill.vectorizer import allowed_accounts, vectorizer_records

logger = logging.getLogger(__name__)

Response = tuple[int, bytes, dict[str, str]]
JSON_HEADERS = {"Content-Type": "application/json"}


def model_path(settings: Settings) -> Path:
    """AZUREML_MODEL_DIR when set, else the bundled sample."""
    return settings.model_dir or SAMPLE_BUNDLE


def build_holder(settings: Settings) -> ModelHolder[Model]:
    """The Blob model store when one is configured, else AZUREML_MODEL_DIR, else the bundled sample."""
    source: ModelSource
    if settings.uses_blob_store:
        from shared.modelstore import prefetch
        from shared.modelstore.source import BlobSource

        # A prefetch started at process start (prefetch.start) has cached the current version.
        source = BlobSource.from_settings(settings, prefetch.take(settings))
    else:
        source = FolderSource(model_path(settings))

    def load(path: Path) -> Model:
        return load_model(path, threads=model_threads(settings))

    return ModelHolder(source, load, poll_s=settings.poll_s)


class SkillService:
    """Settings, the model holder and the decode pool of one process."""

    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder[Model] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.holder = holder or build_holder(settings)
        workers = settings.decode_threads or os.cpu_count() or 1
        # Every image is decoded in this pool (one task per image) and classified there, one-record requests
        # too, so concurrent requests cannot decode more images at once than it has threads; the budget
        # bounds the decoded bytes in flight.
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self.budget = DecodeBudget(settings.decode_budget_bytes(), clock=clock)
        self.clock = clock
        self.image_accounts = allowed_accounts(settings)
        # The vectorizer's model when the index's vectors come from another version than the current one.
        self._vector_lock = threading.Lock()
        self._pinned: Model | None = None
        self._embedded: str | None = None
        self._embedded_next = 0.0
        self._embedded_error: str | None = None
        self._store: Any = None  # the vectorizer's BlobModelStore, built once (its credential caches tokens)

    def classify(self, body: bytes, query: Mapping[str, str]) -> Response:
        """Answer one skill request: (status, JSON body, headers). Never raises."""
        started = self.clock()
        try:
            return self._classify(body, query, started)
        except HttpError as exc:
            logger.warning("skill request refused: %s %s: %.300s", exc.status, exc.code, exc)
            return exc.status, error_body(exc.code, str(exc)), {**JSON_HEADERS, **exc.headers()}
        except Exception:  # our bug, not the caller's: say so without details, log the traceback
            incident = uuid.uuid4().hex[:12]
            logger.exception("skill request failed (incident %s)", incident)
            return 500, error_body("InternalError", f"internal error (incident {incident})"), dict(JSON_HEADERS)

    def _classify(self, body: bytes, query: Mapping[str, str], started: float) -> Response:
        s = self.settings
        records = parse_request(
            body, max_request_bytes=s.max_request_bytes, max_records=s.max_records, max_image_bytes=s.max_image_bytes
        )
        q = parse_query(query)
        model = self.holder.current()
        missing_embedding: str | None = None
        if q.embedding:
            view = embedding_view(model)
            if view is None:
                missing_embedding = (
                    f"embedding=true: model {model.version} ({model.task}) has no embedding; only classification "
                    "models have one"
                )
            else:
                model = view
        options = InferenceOptions(
            top_k=q.top_k,
            default_top_k=s.default_top_k,
            threshold=q.threshold,
            fast_decode=s.fast_jpeg_decode,
            limits=s.image_limits(),
        )
        todo = [r for r in records if r.loader is not None]
        stats = BatchStats()
        outcomes: list[ImageOutcome] = self._run(model, todo, options, started, stats)
        if missing_embedding is not None:
            outcomes = [
                dataclasses.replace(o, warnings=(*o.warnings, missing_embedding)) if o.data is not None else o
                for o in outcomes
            ]
        values = response_values(records, {r.record_id: o for r, o in zip(todo, outcomes, strict=True)})
        errors = sum(1 for v in values if v["errors"])
        warnings = sum(1 for v in values if v["warnings"])
        logger.info(
            "classified records=%d errors=%d warnings=%d model=%s decode_ms=%.0f infer_ms=%.0f total_ms=%.0f",
            len(values),
            errors,
            warnings,
            model.version,
            stats.decode_ms,
            stats.infer_ms,
            1000 * (self.clock() - started),
        )
        return 200, json.dumps({"values": values}).encode(), dict(JSON_HEADERS)

    def _run(
        self, model: Any, todo: list[Any], options: InferenceOptions, started: float, stats: BatchStats | None = None
    ) -> list[ImageOutcome]:
        """The records' images through the scheduler, on this service's pool and budget, within the deadline."""
        deadline_s = self.settings.deadline_s
        return run_batch(
            model,
            [r.loader for r in todo if r.loader is not None],
            options,
            pool=self.pool,
            workers=self.workers,
            budget=self.budget,
            deadline=started + deadline_s,
            budget_s=deadline_s,
            clock=self.clock,
            stats=stats,
        )

    def vectorize(self, body: bytes) -> Response:
        """Answer one Custom Web API vectorizer request: `data.vector` per record. Never raises."""
        started = self.clock()
        try:
            return self._vectorize(body, started)
        except HttpError as exc:
            logger.warning("vectorizer request refused: %s %s: %.300s", exc.status, exc.code, exc)
            return exc.status, error_body(exc.code, str(exc)), {**JSON_HEADERS, **exc.headers()}
        except Exception:
            incident = uuid.uuid4().hex[:12]
            logger.exception("vectorizer request failed (incident %s)", incident)
            return 500, error_body("InternalError", f"internal error (incident {incident})"), dict(JSON_HEADERS)

    def _vectorize(self, body: bytes, started: float) -> Response:
        s = self.settings
        parsed = parse_request(
            body, max_request_bytes=s.max_request_bytes, max_records=s.max_records, max_image_bytes=s.max_image_bytes
        )
        raw = [v if isinstance(v, dict) else {} for v in bodyjson.loads(body)["values"]]
        records = vectorizer_records(parsed, raw, s, self.image_accounts)
        todo = [r for r in records if r.loader is not None]
        model = self.vector_model() if todo else None
        outcomes: dict[str, ImageOutcome] = {}
        if model is not None:
            view = embedding_view(model)
            if view is None:
                message = (
                    f"model {model.version} ({model.task}) has no embedding: only classification models can be the "
                    "index's vectorizer"
                )
                outcomes = {r.record_id: ImageOutcome(data=None, errors=(message,)) for r in todo}
            else:
                options = InferenceOptions(fast_decode=s.fast_jpeg_decode, limits=s.image_limits())
                answered = self._run(view, todo, options, started)
                outcomes = {r.record_id: _vector_outcome(o) for r, o in zip(todo, answered, strict=True)}
        values = response_values(records, outcomes)
        logger.info(
            "vectorized records=%d errors=%d model=%s total_ms=%.0f",
            len(values),
            sum(1 for v in values if v["errors"]),
            model.version if model is not None else "-",
            1000 * (self.clock() - started),
        )
        return 200, json.dumps({"values": values}).encode(), dict(JSON_HEADERS)

    def vector_model(self) -> Model:
        """The model query vectors come from: the version the index's vectors come from (reindex.json's
        `embedded`, read at most every MODEL_POLL_SECONDS) while re-enrichment with a newer current version has
        not finished, else the current model. Raises ModelNotReady."""
        current = self.holder.current()
        embedded = self._embedded_version()
        if embedded is None or embedded == current.version:
            self._pinned = None  # the switch is done: the older version's memory goes back
            return current
        pinned = self._pinned
        if pinned is not None and pinned.version == embedded:
            return pinned
        with self._vector_lock:
            if self._pinned is not None and self._pinned.version == embedded:
                return self._pinned
            self._pinned = self._load_version(embedded)
            return self._pinned

    def _vector_store(self) -> Any:
        """The model store the vectorizer reads reindex.json and older versions from. Raises StoreError."""
        if self._store is None:
            from shared.modelstore.blobstore import BlobModelStore

            store = BlobModelStore.from_settings(self.settings)
            if store is None:
                raise StoreError("no model store is configured")
            self._store = store
        return self._store

    def _load_version(self, version: str) -> Model:
        from shared.modelstore.reads import store_cache_dir

        try:
            store = self._vector_store()
            folder = store.download_version(
                version, store_cache_dir(self.settings.model_cache_dir(), store.description)
            )
            model = load_model(folder, threads=model_threads(self.settings))
        except AppError as exc:
            logger.error("the index's vectors come from model %s, which cannot be loaded: %s", version, exc)
            raise ModelNotReady(
                f"the index's vectors come from model {version}, which cannot be loaded here ({exc}); query vectors "
                "from another version would not match them",
                retry_after_s=60,
            ) from None
        logger.info("vectorizer loaded model %s, the version the index's vectors come from", version)
        return model

    def _embedded_version(self) -> str | None:
        if not self.settings.uses_blob_store:
            return None
        now = self.clock()
        if now < self._embedded_next:
            return self._embedded
        from shared.modelstore.embedded import read_embedded_version

        self._embedded_next = now + self.settings.poll_s
        try:
            self._embedded = read_embedded_version(self._vector_store())
            self._embedded_error = None
        except AppError as exc:
            if str(exc) != self._embedded_error:
                logger.warning(
                    "cannot read the re-enrichment record (%s); the vectorizer keeps %s", exc, self._embedded
                )
            self._embedded_error = str(exc)
        return self._embedded

    def health(self) -> Response:
        """200 with the model's status when one is loaded (loading it if needed), else 503."""
        try:
            self.holder.current()
        except ModelNotReady as exc:
            body: dict[str, Any] = {"status": "unavailable", "model": self.holder.status()}
            return 503, json.dumps(body).encode(), {**JSON_HEADERS, **exc.headers()}
        return 200, json.dumps({"status": "ready", "model": self.holder.status()}).encode(), dict(JSON_HEADERS)


_service: SkillService | None = None
_service_error: str | None = None
_service_lock = threading.Lock()


def service() -> SkillService:
    """The process's service, built from the environment on first use. Raises AppError when the settings, or
    the model store they name, cannot be used (logged once per distinct message)."""
    global _service, _service_error  # noqa: PLW0603 - one service per process, like the Functions worker
    if _service is not None:
        return _service
    with _service_lock:
        if _service is None:
            try:
                _service = SkillService(Settings.from_env())
            except AppError as exc:
                if str(exc) != _service_error:
                    logger.error("app settings are invalid: %s", exc)
                _service_error = str(exc)
                raise
        return _service


def reset_service(new: SkillService | None = None) -> None:
    """Replace the process's service (tests, the dev server after changing settings)."""
    global _service, _service_error
    with _service_lock:
        _service, _service_error = new, None


def _misconfigured(exc: AppError) -> Response:
    return 503, error_body("Misconfigured", str(exc)), {**JSON_HEADERS, "Retry-After": "60"}


def classify(body: bytes, query: Mapping[str, str]) -> Response:
    """Entry point for ClassifySkill, the dev server and the CLI."""
    try:
        running = service()
    except AppError as exc:
        return _misconfigured(exc)
    return running.classify(body, query)


def vectorize(body: bytes) -> Response:
    """Entry point for VectorizeImage and the dev server."""
    try:
        running = service()
    except AppError as exc:
        return _misconfigured(exc)
    return running.vectorize(body)


def _vector_outcome(outcome: ImageOutcome) -> ImageOutcome:
    if outcome.errors or outcome.data is None:
        return outcome
    return ImageOutcome(data={"vector": outcome.data["embedding"]}, warnings=outcome.warnings)


def health() -> Response:
    try:
        running = service()
    except AppError as exc:
        return _misconfigured(exc)
    return running.health()
