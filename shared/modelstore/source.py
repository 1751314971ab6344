"""Where the holder's models come from: a fixed folder, or the Blob model store's current version.

A ModelSource hands the holder (shared.modelstore.holder) a verified folder to load; the Blob source reads the
pointer, downloads and verifies the version into the cache, and remembers which versions loaded and which
failed.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from shared.bundle.layout import MANIFEST_FILE
from shared.core.settings import Settings
from shared.modelstore.errors import StoreError, StoreUnreachable, VersionCorrupt
from shared.modelstore.pointer import Pointer, Unchanged, check_version_name
from shared.modelstore.prefetch import Prefetched
from shared.modelstore.reads import store_cache_dir

if TYPE_CHECKING:
    from shared.modelstore.blobstore import BlobModelStore


@dataclass(frozen=True)
class Fetched:
    """A verified bundle folder on local disk.

    `token` is what the source needs to tell later whether anything changed (the pointer's ETag); `origin`
    describes where it came from, for health; `digest` identifies the exact content the source offered
    (the manifest's sha256), so a version that failed to load is not fetched again until it changes.
    `unreachable` is set when the source could not be asked and this is the copy it served last: the
    model may be out of date, and health must say so.
    """

    path: Path
    version: str | None
    token: str | None
    origin: str
    digest: str | None = None
    unreachable: str | None = None


class ModelSource(Protocol):
    description: str
    polls: bool

    def fetch(self, token: str | None) -> Fetched | None:
        """The model to serve, or None when nothing changed since `token`. Raises AppError
        (SourceUnreachable when the source did not answer)."""

    def served(self, fetched: Fetched) -> None:
        """`fetched` loaded and answered a smoke inference: it may be served again at a cold start."""

    def rejected(self, fetched: Fetched, message: str) -> None:
        """`fetched` could not be loaded: do not offer the same content again until the source changes."""


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

    def served(self, fetched: Fetched) -> None:
        return None

    def rejected(self, fetched: Fetched, message: str) -> None:
        return None


SERVED_MARKER = ".served"


class BlobSource:
    """The holder's view of the store: the pointer's version, downloaded and verified into the cache.

    When the store cannot be reached at a cold start, the version that last loaded and answered from this
    store's cache is served (if it is there), marked as coming from a cache during an outage; the pointer is
    checked again at the next poll. A version that failed (download, checksum or load) is remembered with
    its manifest hash and not fetched again until current.json changes.
    """

    polls = True

    def __init__(self, store: BlobModelStore, cache_dir: Path, *, prefetched: Prefetched | None = None) -> None:
        """`store`'s versions, cached in their own part of `cache_dir`; `prefetched` is the version the cold
        start's prefetch already downloaded from the same container, served by the first fetch."""
        self.store = store
        self.description = store.description
        self.cache_dir = store_cache_dir(cache_dir, self.description)
        self._prefetched = prefetched if prefetched is not None and prefetched.description == self.description else None
        self._rejected: tuple[str, str, str] | None = None  # (version, manifest sha256, pointer etag)
        self._rejected_message = ""

    @classmethod
    def from_settings(cls, settings: Settings, prefetched: Prefetched | None = None) -> BlobSource:
        """The configured store's source (see __init__). Raises StoreError when no store is configured,
        SettingsError when MODEL_CACHE_DIR cannot be used."""
        from shared.modelstore.blobstore import BlobModelStore

        store = BlobModelStore.from_settings(settings)
        if store is None:
            raise StoreError("a Blob source needs MODEL_BLOB_CONNECTION_STRING or MODEL_BLOB_ACCOUNT_URL")
        return cls(store, settings.usable_cache_dir(), prefetched=prefetched)

    def fetch(self, token: str | None) -> Fetched | None:
        prefetched, self._prefetched = self._prefetched, None
        if token is None and prefetched is not None:
            return self._fetched(prefetched.pointer, prefetched.path)
        rejected = self._rejected
        try:
            pointer = self.store.read_pointer(rejected[2] if rejected else token)
        except StoreUnreachable as exc:
            if token is None:
                cached = self._last_served()
                if cached is not None:
                    return Fetched(
                        path=cached,
                        version=cached.name,
                        token=None,
                        origin=f"cache {cached} (store unreachable)",
                        unreachable=str(exc),
                    )
            raise
        if isinstance(pointer, Unchanged):
            if rejected is not None:
                raise StoreError(self._rejected_message)
            return None
        if pointer is None:
            raise StoreError(
                f"no model is published in {self.description} yet: run `python -m shared publish PATH` "
                "or let RefreshModel publish one"
            )
        if rejected is not None and (pointer.version, pointer.manifest_sha256) == rejected[:2]:
            self._rejected = (*rejected[:2], pointer.etag)
            raise StoreError(self._rejected_message)
        self._rejected = None
        try:
            path = self.store.download_version(pointer.version, self.cache_dir, pointer.manifest_sha256)
        except VersionCorrupt as exc:
            self._reject(pointer.version, pointer.manifest_sha256, pointer.etag, str(exc))
            raise
        return self._fetched(pointer, path)

    def _fetched(self, pointer: Pointer, path: Path) -> Fetched:
        return Fetched(
            path=path,
            version=pointer.version,
            token=pointer.etag,
            origin=f"{self.description} ({pointer.version})",
            digest=pointer.manifest_sha256,
        )

    def served(self, fetched: Fetched) -> None:
        if fetched.version is not None:
            self._mark_served(fetched.version)

    def rejected(self, fetched: Fetched, message: str) -> None:
        if fetched.version is not None and fetched.digest is not None and fetched.token is not None:
            self._reject(fetched.version, fetched.digest, fetched.token, message)

    def _reject(self, version: str, digest: str, etag: str, message: str) -> None:
        self._rejected = (version, digest, etag)
        # The same words as the first failure: the holder logs a message once, not at every poll.
        self._rejected_message = message

    def _mark_served(self, version: str) -> None:
        marker = self.cache_dir / SERVED_MARKER
        temp = self.cache_dir / f"{SERVED_MARKER}.{uuid.uuid4().hex[:8]}"
        try:
            temp.write_text(version, encoding="utf-8")
            os.replace(temp, marker)
        except OSError:
            temp.unlink(missing_ok=True)

    def _last_served(self) -> Path | None:
        try:
            version = (self.cache_dir / SERVED_MARKER).read_text(encoding="utf-8").strip()
            check_version_name(version)
        except (OSError, StoreError):
            return None
        folder = self.cache_dir / version
        return folder if (folder / MANIFEST_FILE).is_file() else None
