"""Start downloading the served model from the Blob store at process start, beside the rest of start-up.

A cold start from the model store pays for importing the Azure Storage SDK and for downloading and
verifying the model. `start()`, called by an entry point before its other imports, imports the SDK and
then reads the pointer and downloads the version on a background thread while the caller imports ONNX
Runtime, numpy, Pillow and the Functions SDK; `build_holder` then `wait()`s for the download if it is
still running, and the holder's first fetch finds the version verified in the cache. The SDK import
stays on the caller's thread because imports hold the GIL: run beside the caller's own imports it would
only finish later and hold the download back.

The prefetch makes one attempt per request, without the store's retries, so a store that cannot be
reached costs the start-up one failed attempt, not a second round of retries. A failed prefetch is
dropped without a word: the holder's own fetch meets the same failure and reports it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from shared.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class _Prefetch:
    settings: Settings
    done: threading.Event = field(default_factory=threading.Event)


_pending: _Prefetch | None = None
_started = False
_lock = threading.Lock()


def start(settings: Settings | None = None) -> bool:
    """Import the storage SDK, then begin fetching the store's current version into the cache on a
    daemon thread, once per process. `settings` defaults to the environment's. Returns whether a prefetch
    started: False without a configured store, with invalid settings (the app reports those when it
    starts) or when one was started before. Never raises.
    """
    global _pending, _started  # noqa: PLW0603 - one prefetch per process, taken by the one service
    try:
        settings = settings or Settings.from_env()
    except Exception:  # noqa: BLE001 - the service reads the settings again and reports what is wrong
        return False
    if not settings.uses_blob_store:
        return False
    try:
        import azure.storage.blob  # noqa: F401
    except ImportError:  # the service reports the missing package when it builds the store
        return False
    with _lock:
        if _started:
            return False
        _started = True
        job = _pending = _Prefetch(settings)
    threading.Thread(target=_run, args=(job,), name="model-prefetch", daemon=True).start()
    return True


def _run(job: _Prefetch) -> None:
    try:
        from shared.store import BlobModelStore, Pointer, store_cache_dir

        store = BlobModelStore.from_settings(job.settings, retries=0)
        pointer = store.read_pointer() if store is not None else None
        if store is not None and isinstance(pointer, Pointer):
            # Where the service's BlobSource looks for this store's versions.
            cache = store_cache_dir(job.settings.model_cache_dir(), store.description)
            store.download_version(pointer.version, cache, pointer.manifest_sha256)
    except Exception:  # the holder's first fetch meets the same failure and reports it
        logger.debug("model prefetch failed", exc_info=True)
    finally:
        job.done.set()


def wait(settings: Settings) -> None:
    """Wait for the pending prefetch's download when it was started with `settings` (the service's), so
    that the holder's first fetch does not download the same version a second time."""
    global _pending
    with _lock:
        job, _pending = _pending, None
    if job is not None and job.settings == settings:
        job.done.wait()
