"""Start downloading the served model from the Blob store at process start, beside the rest of start-up.

A cold start from the model store pays for downloading and verifying the model and, through the Azure
Storage SDK, for importing the SDK (135-165 ms of one core, half a bare ONNX Runtime script's whole start).
`start()`, called by an entry point before its other imports, reads the pointer and downloads the version
on a background thread while the caller imports ONNX Runtime, numpy, Pillow and the Functions SDK. Where it
can (shared/blobhttp.py: a key, a SAS or the App Service managed identity, no proxy) it reads with plain
HTTP and the SDK is not imported at all before the first request: `build_holder` takes what the prefetch
found (`take`), the holder serves that version at once, and the SDK's client is built for the first poll.
Otherwise the SDK is imported on the caller's thread (imports hold the GIL: beside the caller's own imports
it would only finish later and hold the download back) and the download runs on the thread as before.

The prefetch makes one attempt per request, without the store's retries, so a store that cannot be
reached costs the start-up one failed attempt, not a second round of retries. A failed prefetch is
dropped without a word: the holder's own fetch meets the same failure and reports it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.core.settings import Settings

if TYPE_CHECKING:
    from shared.modelstore.blobhttp import HttpBlobReader
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
    """Begin fetching the store's current version into the cache on a daemon thread, once per process
    (importing the storage SDK first when plain HTTP cannot do). `settings` defaults to the environment's.
    Returns whether a prefetch started: False without a configured store, with invalid settings (the app
    reports those when it starts) or when one was started before. Never raises.
    """
    global _pending, _started  # noqa: PLW0603 - one prefetch per process, taken by the one service
    try:
        settings = settings or Settings.from_env()
    except Exception:  # noqa: BLE001 - the service reads the settings again and reports what is wrong
        return False
    if not settings.uses_blob_store:
        return False
    from shared.modelstore.blobhttp import HttpBlobReader

    reader = HttpBlobReader.from_settings(settings)
    if reader is None:
        try:
            import azure.storage.blob  # noqa: F401
        except ImportError:  # the service reports the missing package when it builds the store
            return False
    with _lock:
        if _started:
            return False
        _started = True
        job = _pending = _Prefetch(settings)
    threading.Thread(target=_run, args=(job, reader), name="model-prefetch", daemon=True).start()
    return True


def _run(job: _Prefetch, reader: HttpBlobReader | None) -> None:
    try:
        from shared.modelstore.blobstore import BlobModelStore
        from shared.modelstore.reads import BlobReads, download_version, read_current, store_cache_dir

        reads: BlobReads | None = reader or BlobModelStore.from_settings(job.settings, retries=0)
        pointer = read_current(reads) if reads is not None else None
        if reads is not None and pointer is not None:
            # Where the service's BlobSource looks for this store's versions.
            cache = store_cache_dir(job.settings.model_cache_dir(), reads.description)
            path = download_version(reads, pointer.version, cache, pointer.manifest_sha256)
            job.found = Prefetched(reads.description, pointer, path)
    except Exception as exc:  # noqa: BLE001 - the holder's first fetch meets the same failure and reports it
        logger.debug("model prefetch failed (%s)", str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    finally:
        if reader is not None:
            reader.close()
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
