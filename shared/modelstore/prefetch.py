"""Start downloading the served model from the Blob store at process start, beside the rest of start-up.

A cold start from the model store pays for importing the Azure SDK and for downloading and verifying the
model (docs/performance.md). `start()`, called by an entry point before its other imports, imports
azure-storage-blob and azure-identity on the caller's thread, then reads `current.json` and downloads its
version into the store's part of the cache on a background thread while the caller imports ONNX Runtime,
numpy, Pillow and the Functions SDK. The import stays on the caller's thread because imports hold the GIL:
beside the caller's own imports it would only finish later and hold the download back. The reads go
through the same BlobModelStore, credentials and checks as every other read of the store
(docs/model-store.md): the manifest against the pointer's sha256, every file against the manifest.

The service's holder takes what the prefetch found (`take`) and serves that version without asking the
store again. The prefetch makes one attempt per request, without the store's retries, so a store that
cannot be reached costs the start-up one failed attempt, not a round of retries. A failed prefetch is
dropped with a debug line only: the holder's own fetch meets the same failure and reports it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.core.settings import Settings

if TYPE_CHECKING:
    from shared.modelstore.pointer import Pointer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prefetched:
    """The version the pointer named when the prefetch read it, verified in the store's part of the cache."""

    description: str
    pointer: Pointer
    path: Path


@dataclass
class _Prefetch:
    settings: Settings
    done: threading.Event = field(default_factory=threading.Event)
    found: Prefetched | None = None


_pending: _Prefetch | None = None
_started = False
_lock = threading.Lock()


def start(settings: Settings | None = None) -> bool:
    """Begin fetching the store's current version into the cache on a daemon thread, once per process,
    after importing the storage SDK and azure-identity on this thread. `settings` defaults to the
    environment's. Returns whether a prefetch started: False without a configured store, with invalid
    settings or without the SDK (the service reports those when it starts), or when one was started
    before. Never raises.
    """
    global _pending, _started  # noqa: PLW0603 - one prefetch per process, taken by the one service
    try:
        settings = settings or Settings.from_env()
    except Exception:  # noqa: BLE001 - the service reads the settings again and reports what is wrong
        return False
    if not settings.uses_blob_store:
        return False
    with _lock:
        if _started:
            return False
        _started = True
    try:
        import azure.storage.blob

        if settings.blob_account_url and not settings.blob_connection_string:
            import azure.identity  # noqa: F401
    except Exception:  # noqa: BLE001 - a missing or broken SDK: the service reports it when it builds the store
        return False
    with _lock:
        job = _pending = _Prefetch(settings)
    threading.Thread(target=_run, args=(job,), name="model-prefetch", daemon=True).start()
    return True


def _run(job: _Prefetch) -> None:
    try:
        from shared.modelstore.blobstore import BlobModelStore
        from shared.modelstore.reads import download_version, read_current, store_cache_dir

        store = BlobModelStore.from_settings(job.settings, retries=0)
        pointer = read_current(store) if store is not None else None
        if store is not None and pointer is not None:
            # Where the service's BlobSource looks for this store's versions.
            cache = store_cache_dir(job.settings.model_cache_dir(), store.description)
            path = download_version(store, pointer.version, cache, pointer.manifest_sha256)
            job.found = Prefetched(store.description, pointer, path)
    except Exception as exc:  # noqa: BLE001 - the holder's first fetch meets the same failure and reports it
        logger.debug("model prefetch failed (%s)", str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    finally:
        job.done.set()


def take(settings: Settings) -> Prefetched | None:
    """Wait for the pending prefetch when it was started with `settings` (the service's), and return the
    version it downloaded, if any; once per process (later callers get None)."""
    global _pending
    with _lock:
        job, _pending = _pending, None
    if job is None or job.settings != settings:
        return None
    job.done.wait()
    return job.found
