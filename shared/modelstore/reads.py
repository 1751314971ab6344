"""Verified reads of a model store and the local cache they fill.

Readers download a version into a temp folder beside the cache, check every sha256 against the manifest (and
the manifest against the pointer), then rename it into place, so a half-written or corrupt version never
becomes loadable. Nothing here imports the Azure SDK: `BlobReads` is what a reader needs of a container.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from shared.bundle.layout import MANIFEST_FILE, write_manifest
from shared.modelstore.errors import StoreError, VersionCorrupt
from shared.modelstore.pointer import POINTER, Pointer, check_version_name, parse_pointer

logger = logging.getLogger(__name__)

# Told of every block of bytes moved: (bytes in this block, total bytes of the version's files).
Progress = Callable[[int, int], None]

PARTIAL_PREFIX = ".partial-"
STALE_PARTIAL_S = 3600


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobReads(Protocol):
    """What reading a version needs from a container (shared.modelstore.blobstore.BlobModelStore implements
    it). Raises StoreError only."""

    description: str

    def read_blob(self, name: str, action: str) -> tuple[bytes, str | None] | None:
        """The blob's bytes and ETag, or None when it (or the container) does not exist."""

    def blob_chunks(self, name: str, action: str) -> Iterator[bytes]:
        """The blob's bytes as they arrive."""


def read_current(reads: BlobReads) -> Pointer | None:
    """`current.json`, or None when nothing is published (or the container does not exist yet)."""
    found = reads.read_blob(POINTER, "reading current.json")
    return None if found is None else parse_pointer(found[0], found[1], reads.description)


def read_manifest(reads: BlobReads, version: str) -> tuple[dict[str, Any], str] | None:
    """A version's manifest and its sha256, or None when the version is absent or incomplete."""
    found = reads.read_blob(f"{version}/{MANIFEST_FILE}", f"reading version {version}")
    if found is None:
        return None
    body = found[0]
    try:
        manifest = json.loads(body)
    except ValueError:
        raise VersionCorrupt(f"version {version}: manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise VersionCorrupt(f"version {version}: manifest.json has no files list")
    return manifest, _sha256(body)


def download_version(
    reads: BlobReads,
    version: str,
    cache_dir: Path,
    expected_manifest_sha256: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """The version's folder in the cache, downloading and verifying it first if it is not there.

    A folder named after the version exists only once every file matched its sha256; the download
    happens in a `.partial-*` folder that is removed on any failure.
    """
    check_version_name(version)
    final = cache_dir / version
    try:
        if (final / MANIFEST_FILE).is_file():
            return final
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_error(cache_dir, exc) from None
    clean_partials(cache_dir)
    found = read_manifest(reads, version)
    if found is None:
        raise StoreError(f"version {version} is not in {reads.description} (or its upload never finished)")
    manifest, manifest_sha = found
    if expected_manifest_sha256 and manifest_sha != expected_manifest_sha256:
        raise VersionCorrupt(
            f"version {version}: manifest.json has sha256 {manifest_sha[:12]}..., current.json expects "
            f"{expected_manifest_sha256[:12]}...; refusing it"
        )
    partial = cache_dir / f"{PARTIAL_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir()
    except OSError as exc:
        raise _cache_error(cache_dir, exc) from None
    total = sum(int(f.get("bytes", 0)) for f in manifest["files"].values() if isinstance(f, dict))
    logger.info("downloading version %s from %s (%.1f MB)", version, reads.description, total / 1e6)
    moved = (lambda n: progress(n, total)) if progress else None
    try:
        for name, entry in manifest["files"].items():
            _download_file(reads, version, name, entry, partial, progress=moved)
        write_manifest(partial, manifest)
        try:
            os.rename(partial, final)
        except OSError:
            if (final / MANIFEST_FILE).is_file():  # another worker finished the same version first
                shutil.rmtree(partial, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("version %s downloaded into the cache (%d files)", version, len(manifest["files"]))
    return final


def _cache_error(cache_dir: Path, exc: OSError) -> StoreError:
    reason = exc.strerror or exc.__class__.__name__
    return StoreError(f"cannot write the model cache {cache_dir} ({reason}); set MODEL_CACHE_DIR to a writable folder")


def _download_file(
    reads: BlobReads,
    version: str,
    name: str,
    entry: Any,
    folder: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> None:
    if (
        not isinstance(name, str)
        or "/" in name
        or "\\" in name
        or name in ("", ".", "..")
        or not isinstance(entry, dict)
        or not isinstance(entry.get("sha256"), str)
    ):
        raise VersionCorrupt(f"version {version}: manifest.json lists an invalid file entry {name!r}")
    digest = hashlib.sha256()
    size = 0
    try:
        handle = (folder / name).open("wb")
    except OSError as exc:
        raise _cache_error(folder.parent, exc) from None
    with handle:
        for chunk in reads.blob_chunks(f"{version}/{name}", f"downloading {version}/{name}"):
            digest.update(chunk)
            size += len(chunk)
            try:
                handle.write(chunk)
            except OSError as exc:  # the disk, not the store: full, or the folder removed meanwhile
                raise _cache_error(folder.parent, exc) from None
            if progress is not None:
                progress(len(chunk))
    if digest.hexdigest() != entry["sha256"] or size != entry.get("bytes", size):
        raise VersionCorrupt(
            f"version {version}: {name} does not match its manifest (sha256 {digest.hexdigest()[:12]}..., "
            f"expected {entry['sha256'][:12]}...); refusing the version"
        )


def clean_partials(cache_dir: Path, older_than_s: float = STALE_PARTIAL_S) -> None:
    """Remove `.partial-*` folders left by downloads that died (another worker's recent one is left alone)."""
    now = time.time()
    for entry in cache_dir.glob(f"{PARTIAL_PREFIX}*"):
        try:
            if now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def store_cache_dir(cache_dir: Path, description: str) -> Path:
    """The part of the cache that holds one store's versions: `<cache>/store-<12 hex of the container URL>`.

    Version names are unique only within a store (two containers may both hold a `v1`, with different
    files), so each store gets its own folder, and a server for one container never serves a version that
    only another container has.
    """
    return cache_dir / ("store-" + hashlib.sha256(description.encode()).hexdigest()[:12])
