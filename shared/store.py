"""The Blob model store (DESIGN §5): immutable versions behind a pointer written last, conditionally.

```
<container>/<version>/model.onnx, labels.json, manifest.json, ...   immutable once the manifest exists
<container>/current.json  {"version", "manifest_sha256", "promoted", "metric"}
```

A version is complete exactly when its `manifest.json` exists: files are uploaded first, the manifest
last. Readers download a version into a temp folder beside the cache, check every sha256 against the
manifest (and the manifest against the pointer), then rename it into place, so a half-written or corrupt
version never becomes loadable. `azure.storage.blob` is imported only here, lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import ClassifierError
from shared.layout import LABELS_FILE, MANIFEST_FILE, MODEL_FILE, write_manifest
from shared.settings import Settings
from shared.source import Fetched, SourceUnreachable

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from shared.bundle import ModelBundle
    from shared.prefetch import Prefetched

logger = logging.getLogger(__name__)

POINTER = "current.json"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_VERSIONS = frozenset({"sample"})
# Files a published version carries besides the manifest: the model, its labels, and license texts when
# the bundle has them (the sample does).
VERSION_FILES = (MODEL_FILE, LABELS_FILE, "NOTICE", "LICENSE")
PARTIAL_PREFIX = ".partial-"
STALE_PARTIAL_S = 3600
# Fail fast when the store is down: the loaded model keeps serving and the next poll tries again. The
# storage SDK's default retry waits 15 s, then 45 s, between attempts.
RETRIES = 2
RETRY_BACKOFF_S = 1
CONNECTION_TIMEOUT_S = 5
READ_TIMEOUT_S = 60


def client_options(retries: int = RETRIES) -> dict[str, Any]:
    from azure.storage.blob import LinearRetry

    return {
        "retry_policy": LinearRetry(backoff=RETRY_BACKOFF_S, random_jitter_range=0, retry_total=retries),
        "connection_timeout": CONNECTION_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }


class StoreError(ClassifierError):
    """The model store refused or failed an operation; the message says which and why."""


class StoreUnreachable(StoreError, SourceUnreachable):
    """No answer from the store (network, DNS, emulator stopped)."""


class StoreConflict(StoreError):
    """The pointer kept changing under us."""


class VersionCorrupt(StoreError):
    """A version's files do not match its manifest, or its manifest does not match the pointer."""


@dataclass(frozen=True)
class Pointer:
    """`current.json` and the ETag it was read with."""

    version: str
    manifest_sha256: str
    promoted: str
    metric: dict[str, Any] | None
    etag: str


@dataclass(frozen=True)
class VersionInfo:
    version: str
    complete: bool
    created: str | None = None
    metric: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    size_bytes: int = 0


@dataclass(frozen=True)
class PublishResult:
    version: str
    uploaded: bool
    promoted: bool
    previous: str | None


# Told of every block of bytes moved: (bytes in this block, total bytes of the version's files).
Progress = Callable[[int, int], None]

# Decides, from the current pointer (None when nothing is published) and the new version's manifest,
# whether publishing also moves the pointer.
PromotePolicy = Callable[[Pointer | None, dict[str, Any]], bool]


def always_promote(current: Pointer | None, manifest: dict[str, Any]) -> bool:
    return True


def never_promote(current: Pointer | None, manifest: dict[str, Any]) -> bool:
    """Upload and verify only (`publish --no-promote`): `promote` moves the pointer once checked."""
    return False


class _Unchanged:
    """Returned by read_pointer when the pointer still has the ETag the caller knows."""


UNCHANGED = _Unchanged()


def check_version_name(version: str) -> str:
    if not VERSION_PATTERN.match(version) or version in RESERVED_VERSIONS or version == POINTER:
        raise StoreError(
            f"version {version!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (and not {', '.join(sorted(RESERVED_VERSIONS))})"
        )
    return version


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text[:200]


def public_url(url: str) -> str:
    """`url` without its query: a container URL as it may be shown, never with a SAS token."""
    return url.split("?", 1)[0]


class BlobReads(Protocol):
    """What reading a version needs from a container: the SDK's BlobModelStore, or the prefetch's plain
    HTTP reader (shared.blobhttp) that spares a cold start the SDK's import. Both raise StoreError only."""

    description: str

    def read_blob(self, name: str, action: str) -> tuple[bytes, str | None] | None:
        """The blob's bytes and ETag, or None when it (or the container) does not exist."""

    def blob_chunks(self, name: str, action: str) -> Iterator[bytes]:
        """The blob's bytes as they arrive."""


def parse_pointer(body: bytes, etag: str | None, description: str) -> Pointer:
    try:
        data = json.loads(body)
        return Pointer(
            version=check_version_name(str(data["version"])),
            manifest_sha256=str(data["manifest_sha256"]),
            promoted=str(data.get("promoted", "")),
            metric=data.get("metric"),
            etag=etag or "",
        )
    except (ValueError, KeyError, TypeError, StoreError):
        raise StoreError(f"{description}/{POINTER} is not a valid pointer") from None


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
    if (final / MANIFEST_FILE).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
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
    partial.mkdir()
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
    with (folder / name).open("wb") as handle:
        for chunk in reads.blob_chunks(f"{version}/{name}", f"downloading {version}/{name}"):
            digest.update(chunk)
            size += len(chunk)
            handle.write(chunk)
            if progress is not None:
                progress(len(chunk))
    if digest.hexdigest() != entry["sha256"] or size != entry.get("bytes", size):
        raise VersionCorrupt(
            f"version {version}: {name} does not match its manifest (sha256 {digest.hexdigest()[:12]}..., "
            f"expected {entry['sha256'][:12]}...); refusing the version"
        )


class BlobModelStore:
    """One Blob container holding model versions. Every method raises StoreError subclasses only."""

    def __init__(self, container: ContainerClient) -> None:
        # The SDK logs every request and response header at INFO; a poll every minute would flood the log.
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        self.container = container
        # The container URL names the account and container. With a SAS connection string the SDK's URL
        # also carries the SAS token, a secret: the description (health, logs, errors) leaves it out.
        self.description = public_url(container.url)

    @classmethod
    def from_settings(cls, settings: Settings, *, retries: int = RETRIES) -> BlobModelStore | None:
        """The configured store, or None when neither MODEL_BLOB_CONNECTION_STRING nor MODEL_BLOB_ACCOUNT_URL is set.
        `retries`: retries of a failed request (the cold-start prefetch makes one attempt only)."""
        from azure.storage.blob import ContainerClient

        if settings.blob_connection_string:
            try:
                client = ContainerClient.from_connection_string(
                    settings.blob_connection_string, settings.blob_container, **client_options(retries)
                )
            except ValueError:
                raise StoreError("MODEL_BLOB_CONNECTION_STRING is not a valid storage connection string") from None
            return cls(client)
        if settings.blob_account_url:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
            return cls(
                ContainerClient(
                    settings.blob_account_url, settings.blob_container, credential=credential, **client_options(retries)
                )
            )
        return None

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn the SDK's exceptions into one clear StoreError line (never a key, never a traceback)."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            yield
        except StoreError:
            raise
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise StoreUnreachable(
                f"model store {self.description} is unreachable while {action} ({_reason(exc)})"
            ) from None
        except ClientAuthenticationError as exc:
            # azure.identity found no credential at all: CredentialUnavailableError from one credential, or
            # DefaultAzureCredential's ClientAuthenticationError after trying every one of them.
            if exc.__class__.__name__ == "CredentialUnavailableError" or str(exc).startswith(
                "DefaultAzureCredential failed to retrieve a token"
            ):
                raise StoreError(
                    f"no credential for model store {self.description}: in Azure enable the app's managed "
                    "identity (AZURE_CLIENT_ID for a user-assigned one), locally `az login`, or set "
                    "MODEL_BLOB_CONNECTION_STRING"
                ) from None
            raise StoreError(
                f"credentials for model store {self.description} are missing or were refused while {action} "
                f"({_reason(exc)}); in Azure give the app's managed identity 'Storage Blob Data Contributor', "
                "locally sign in with `az login` or set MODEL_BLOB_CONNECTION_STRING"
            ) from None
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise StoreError(f"container {self.description} does not exist (while {action})") from None
            raise StoreError(f"not found in model store {self.description} while {action}") from None
        except HttpResponseError as exc:
            status = getattr(exc, "status_code", None)
            if status == 403:
                raise StoreError(
                    f"access to model store {self.description} was denied while {action}; the identity needs "
                    "'Storage Blob Data Contributor' on the container"
                ) from None
            raise StoreError(f"model store {self.description} answered {status} while {action}") from None

    def ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self._errors("creating the container"), suppress(ResourceExistsError):
            self.container.create_container()

    # -- the pointer -------------------------------------------------------------------------------------

    def read_pointer(self, known_etag: str | None = None) -> Pointer | _Unchanged | None:
        """`current.json`: a Pointer, None when nothing is published, or UNCHANGED when its ETag is still
        `known_etag` (a conditional GET, so polling costs one small request)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError, ResourceNotModifiedError

        blob = self.container.get_blob_client(POINTER)
        with self._errors("reading current.json"):
            try:
                if known_etag:
                    downloader = blob.download_blob(etag=known_etag, match_condition=MatchConditions.IfModified)
                else:
                    downloader = blob.download_blob()
                body = downloader.readall()
            except ResourceNotModifiedError:
                return UNCHANGED
            except ResourceModifiedError:
                # Azurite answers a matching If-None-Match on GET with 412 instead of 304; on a GET with
                # If-None-Match a failed precondition can only mean "unchanged".
                return UNCHANGED
            except ResourceNotFoundError:
                # No pointer, or no container yet (a fresh store: the first publish creates it).
                return None
        return parse_pointer(body, downloader.properties.etag, self.description)

    def write_json_conditionally(self, name: str, data: dict[str, Any], expected_etag: str | None) -> str:
        """Write the JSON blob `name` only if it is still the one read: If-Match `expected_etag`, or
        If-None-Match * (create only) when it is None. Returns the new ETag. Raises StoreConflict when someone
        else wrote it meanwhile, StoreError for any other failure. current.json and reindex.json use it."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.storage.blob import ContentSettings

        body = json.dumps(data, sort_keys=True).encode()
        blob = self.container.get_blob_client(name)
        settings = ContentSettings(content_type="application/json", cache_control="no-cache")
        with self._errors(f"writing {name}"):
            try:
                if expected_etag is None:
                    result = blob.upload_blob(body, overwrite=False, content_settings=settings)
                else:
                    result = blob.upload_blob(
                        body,
                        overwrite=True,
                        etag=expected_etag,
                        match_condition=MatchConditions.IfNotModified,
                        content_settings=settings,
                    )
            except (ResourceExistsError, ResourceModifiedError):
                raise StoreConflict(f"{name} changed while it was being written") from None
        return str(result["etag"])

    def _write_pointer(self, version: str, manifest_sha: str, metric: Any, current: Pointer | None) -> Pointer:
        """Conditional write: If-Match the ETag we read, or If-None-Match * when there was no pointer."""
        promoted = _utc_now()
        data = {"version": version, "manifest_sha256": manifest_sha, "promoted": promoted, "metric": metric}
        etag = self.write_json_conditionally(POINTER, data, current.etag if current is not None else None)
        return Pointer(version, manifest_sha, promoted, metric, etag)

    def _move_pointer(
        self, version: str, manifest: dict[str, Any], manifest_sha: str, policy: PromotePolicy
    ) -> tuple[bool, str | None]:
        for _ in range(5):
            current = self.read_pointer()
            assert not isinstance(current, _Unchanged)
            previous = current.version if current else None
            if current is not None and current.version == version:
                return False, previous
            if not policy(current, manifest):
                return False, previous
            try:
                self._write_pointer(version, manifest_sha, manifest.get("metric"), current)
            except StoreConflict:
                continue
            return True, previous
        raise StoreConflict(f"current.json in {self.description} kept changing; try again")

    # -- versions ----------------------------------------------------------------------------------------

    def read_manifest(self, version: str) -> tuple[dict[str, Any], str] | None:
        """A version's manifest and its sha256, or None when the version is absent or incomplete."""
        return read_manifest(self, version)

    def read_blob(self, name: str, action: str) -> tuple[bytes, str | None] | None:
        """BlobReads: the blob's bytes and ETag, or None when it (or the container) does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors(action):
            try:
                downloader = self.container.get_blob_client(name).download_blob()
                return downloader.readall(), downloader.properties.etag
            except ResourceNotFoundError:
                return None

    def blob_chunks(self, name: str, action: str) -> Iterator[bytes]:
        """BlobReads: the blob's bytes as they arrive."""
        with self._errors(action):
            yield from self.container.get_blob_client(name).download_blob().chunks()

    def _version_folders(self) -> list[str]:
        """The names of the top-level folders; none when the container does not exist yet."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import BlobPrefix

        with self._errors("listing versions"):
            try:
                return [
                    p.name.rstrip("/") for p in self.container.walk_blobs(delimiter="/") if isinstance(p, BlobPrefix)
                ]
            except ResourceNotFoundError:
                return []

    def list_versions(self) -> list[VersionInfo]:
        """Every version folder, complete or not, sorted by creation time (then name); empty for a store
        whose container does not exist yet."""
        infos: list[VersionInfo] = []
        for name in self._version_folders():
            found = self.read_manifest(name) if VERSION_PATTERN.match(name) else None
            if found is None:
                infos.append(VersionInfo(version=name, complete=False))
                continue
            manifest, _ = found
            size = sum(int(f.get("bytes", 0)) for f in manifest["files"].values() if isinstance(f, dict))
            infos.append(
                VersionInfo(
                    version=name,
                    complete=True,
                    created=manifest.get("created"),
                    metric=manifest.get("metric"),
                    source=manifest.get("source"),
                    size_bytes=size,
                )
            )
        return sorted(infos, key=lambda i: (i.created or "", i.version))

    def same_content(self, manifest: dict[str, Any]) -> str | None:
        """The oldest complete version with exactly the files, task and preprocessing of `manifest`, if any."""
        matches = []
        for name in self._version_folders():
            found = self.read_manifest(name) if VERSION_PATTERN.match(name) else None
            if found is None:
                continue
            stored = found[0]
            if all(stored.get(key) == manifest.get(key) for key in ("files", "task", "preprocessing")):
                matches.append((str(stored.get("created") or ""), name))
        return min(matches)[1] if matches else None

    def promote(self, version: str) -> PublishResult:
        """Point current.json at an existing complete version (rollback or pin). An unknown version's error
        lists the complete versions there are."""
        check_version_name(version)
        found = self.read_manifest(version)
        if found is None:
            complete = [i.version for i in self.list_versions() if i.complete]
            there = f"versions there: {', '.join(complete)}" if complete else "it has no complete versions yet"
            raise StoreError(f"version {version} is not in {self.description} (or its upload never finished); {there}")
        manifest, manifest_sha = found
        moved, previous = self._move_pointer(version, manifest, manifest_sha, always_promote)
        return PublishResult(version=version, uploaded=False, promoted=moved, previous=previous)

    def publish(
        self,
        path: str | Path,
        *,
        version: str | None = None,
        source: dict[str, Any] | None = None,
        metric: dict[str, Any] | None = None,
        policy: PromotePolicy = always_promote,
        validate: Callable[[ModelBundle], None] | None = None,
        progress: Progress | None = None,
    ) -> PublishResult:
        """Upload a bundle folder or AutoML run folder as a version, then move the pointer per `policy`.

        `validate` (for example opening an Engine) runs before anything is uploaded. Without `version`, the
        name is the run id named by the source, else the content name (bundle.content_version), and content
        that the store already holds under any name reuses that name (nothing is uploaded). Publishing the
        same content under the same version again uploads nothing; different content under an existing
        version is refused (versions are immutable). `policy=never_promote` uploads without moving the pointer.
        """
        from shared.bundle import build_manifest, load_bundle  # numpy: not on the prefetch's path

        bundle = load_bundle(path)
        if validate is not None:
            validate(bundle)
        with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
            staged = Path(tmp)
            origins = {MODEL_FILE: bundle.model_path, LABELS_FILE: bundle.labels_path}
            for name in VERSION_FILES:
                origin = origins.get(name, bundle.model_path.parent / name)
                if origin.is_file():
                    shutil.copyfile(origin, staged / name)
            chosen_source = (
                source or (bundle.manifest or {}).get("source") or {"kind": "local", "folder": bundle.root.name}
            )
            chosen_metric = metric if metric is not None else (bundle.manifest or {}).get("metric")
            chosen = check_version_name(version or default_version(bundle, chosen_source))
            manifest = build_manifest(
                staged,
                version=chosen,
                task=bundle.task,
                preprocessing=bundle.preprocessing,
                source=chosen_source,
                metric=chosen_metric,
                opset=bundle.opset,
            )
            if version is None and (same := self.same_content(manifest)) is not None:
                chosen = same
                manifest["version"] = same
            uploaded = self._upload_version(staged, chosen, manifest, progress)
        found = self.read_manifest(chosen)
        if found is None:
            raise StoreError(f"version {chosen} vanished from {self.description} right after upload")
        stored_manifest, manifest_sha = found
        moved, previous = self._move_pointer(chosen, stored_manifest, manifest_sha, policy)
        return PublishResult(version=chosen, uploaded=uploaded, promoted=moved, previous=previous)

    def _upload_version(
        self, staged: Path, version: str, manifest: dict[str, Any], progress: Progress | None = None
    ) -> bool:
        from azure.core.exceptions import ResourceExistsError

        existing = self.read_manifest(version)
        if existing is not None:
            if existing[0]["files"] == manifest["files"]:
                logger.info("version %s is already in the store with the same files", version)
                return False
            raise StoreError(
                f"version {version} already exists in {self.description} with different files; versions are "
                "immutable: publish under another --version"
            )
        self.ensure_container()
        total = sum(int(entry["bytes"]) for entry in manifest["files"].values())
        with self._errors(f"uploading version {version}"):
            for name, entry in manifest["files"].items():
                hook = _delta_hook(progress, total) if progress is not None else None
                with (staged / name).open("rb") as handle:
                    self.container.upload_blob(f"{version}/{name}", handle, overwrite=True, progress_hook=hook)
                size = self.container.get_blob_client(f"{version}/{name}").get_blob_properties().size
                if size != entry["bytes"]:
                    raise StoreError(
                        f"version {version}: {name} was stored with {size} bytes, expected {entry['bytes']}"
                    )
            body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            try:
                # The manifest is the version's commit: If-None-Match *, so a racing publisher of the same
                # version name cannot replace it.
                self.container.upload_blob(f"{version}/{MANIFEST_FILE}", body, overwrite=False)
            except ResourceExistsError:
                raced = self.read_manifest(version)
                if raced is None or raced[0]["files"] != manifest["files"]:
                    raise StoreError(f"version {version} was published concurrently with different files") from None
                return False
        return True

    # -- downloading into the cache -----------------------------------------------------------------------

    def download_version(
        self,
        version: str,
        cache_dir: Path,
        expected_manifest_sha256: str | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """The version's folder in the cache, downloading and verifying it first (see download_version)."""
        return download_version(self, version, cache_dir, expected_manifest_sha256, progress)


def _delta_hook(progress: Progress, total: int) -> Callable[[int, int | None], None]:
    """The SDK's progress_hook (bytes of this blob so far) as Progress (bytes since the last call)."""
    sent = 0

    def hook(current: int, _blob_total: int | None) -> None:
        nonlocal sent
        progress(current - sent, total)
        sent = current

    return hook


def version_from_run_id(run_id: str) -> str | None:
    """A run id as a version name (AML run ids mostly are already), or None if nothing usable is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", run_id).strip("-._")[:64]
    if cleaned and VERSION_PATTERN.match(cleaned) and cleaned not in RESERVED_VERSIONS:
        return cleaned
    return None


def default_version(bundle: ModelBundle, source: dict[str, Any]) -> str:
    """From the run id when the source names one, else the content name (`m-` + 12 hex digits, the same
    name `classify` shows for the folder: shared.bundle.content_version)."""
    run_id = source.get("run_id") if isinstance(source, dict) else None
    if isinstance(run_id, str) and run_id and (named := version_from_run_id(run_id)):
        return named
    from shared.bundle import bundle_content_version

    return bundle_content_version(bundle)


def clean_partials(cache_dir: Path, older_than_s: float = STALE_PARTIAL_S) -> None:
    """Remove `.partial-*` folders left by downloads that died (another worker's recent one is left alone)."""
    now = time.time()
    for entry in cache_dir.glob(f"{PARTIAL_PREFIX}*"):
        try:
            if now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


SERVED_MARKER = ".served"


def store_cache_dir(cache_dir: Path, description: str) -> Path:
    """The part of the cache that holds one store's versions: `<cache>/store-<12 hex of the container URL>`.

    Version names are unique only within a store (two containers may both hold a `v1`, with different
    files), so each store gets its own folder, and a server for one container never serves a version that
    only another container has.
    """
    return cache_dir / ("store-" + hashlib.sha256(description.encode()).hexdigest()[:12])


class BlobSource:
    """The holder's view of the store: the pointer's version, downloaded and verified into the cache.

    When the store cannot be reached at a cold start, the version that last loaded and answered from this
    store's cache is served (if it is there), marked as coming from a cache during an outage; the pointer is
    checked again at the next poll. A version that failed (download, checksum or load) is remembered with
    its manifest hash and not fetched again until current.json changes.
    """

    polls = True

    def __init__(
        self,
        store: BlobModelStore | Callable[[], BlobModelStore],
        cache_dir: Path,
        *,
        prefetched: Prefetched | None = None,
    ) -> None:
        """`store`, or a function that builds it on first use when the cold start's prefetch found the
        version to serve (`prefetched`; its description names the same container)."""
        if isinstance(store, BlobModelStore):
            self._store: BlobModelStore | None = store
            self.description = store.description
        else:
            assert prefetched is not None, "a store built on first use needs the prefetch's description"
            self._store, self._make_store = None, store
            self.description = prefetched.description
        self.cache_dir = store_cache_dir(cache_dir, self.description)
        self._prefetched = prefetched
        self._rejected: tuple[str, str, str] | None = None  # (version, manifest sha256, pointer etag)
        self._rejected_message = ""

    @classmethod
    def from_settings(cls, settings: Settings, prefetched: Prefetched | None = None) -> BlobSource:
        """The configured store's source. With what the cold start's prefetch found (shared/prefetch.py),
        the first fetch serves that version without asking the store again, and the SDK's client is built
        (and the SDK imported) only for the first poll."""

        def make_store() -> BlobModelStore:
            store = BlobModelStore.from_settings(settings)
            assert store is not None, "a Blob source needs MODEL_BLOB_CONNECTION_STRING or MODEL_BLOB_ACCOUNT_URL"
            return store

        return cls(make_store if prefetched else make_store(), settings.model_cache_dir(), prefetched=prefetched)

    @property
    def store(self) -> BlobModelStore:
        if self._store is None:
            assert self._make_store is not None
            self._store = self._make_store()
        return self._store

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
        if isinstance(pointer, _Unchanged):
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


# -- the re-enrichment record (shared/reindex.py) ------------------------------------------------------------
# `reindex.json` beside current.json remembers which version the search index was last re-enriched with, and
# the claim of a pass that is re-enriching right now. It is written like current.json: If-Match the ETag that
# was read, If-None-Match * when creating it, so two passes cannot both claim the same version.

REINDEX_RECORD = "reindex.json"


@dataclass(frozen=True)
class ReindexRecord:
    """`reindex.json` and the ETag it was read with.

    `version` is the version the index was last re-enriched with (or the baseline); `pending` is the version a
    pass has claimed and is re-enriching, with `claimed` the UTC time of the claim ("%Y-%m-%dT%H:%M:%SZ").
    """

    version: str
    recorded: str
    mode: str
    pending: str | None
    claimed: str | None
    etag: str


def read_reindex_record(store: BlobModelStore) -> ReindexRecord | None:
    """The record, or None when no pass has written one yet. Raises StoreError."""
    from azure.core.exceptions import ResourceNotFoundError

    blob = store.container.get_blob_client(REINDEX_RECORD)
    with store._errors(f"reading {REINDEX_RECORD}"):
        try:
            downloader = blob.download_blob()
            body = downloader.readall()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise StoreError(f"container {store.description} does not exist") from None
            return None
    try:
        data = json.loads(body)
        pending = data.get("pending")
        return ReindexRecord(
            version=check_version_name(str(data["version"])),
            recorded=str(data.get("recorded", "")),
            mode=str(data.get("mode", "")),
            pending=check_version_name(str(pending)) if pending else None,
            claimed=str(data["claimed"]) if data.get("claimed") else None,
            etag=downloader.properties.etag,
        )
    except (ValueError, KeyError, TypeError, AttributeError, StoreError):
        raise StoreError(
            f"{store.description}/{REINDEX_RECORD} is not a valid re-enrichment record: delete it, and the next "
            "pass takes the current version as its baseline"
        ) from None


def write_reindex_record(
    store: BlobModelStore,
    *,
    version: str,
    mode: str,
    expected: ReindexRecord | None,
    pending: str | None = None,
    claimed: str | None = None,
    recorded: str | None = None,
) -> ReindexRecord:
    """Write the record conditionally: If-Match `expected.etag`, or If-None-Match * when `expected` is None.

    Raises StoreConflict when the record changed since `expected` was read (another pass wrote it), StoreError
    for any other failure.
    """
    check_version_name(version)
    recorded = recorded or _utc_now()
    data = {"version": version, "recorded": recorded, "mode": mode, "pending": pending, "claimed": claimed}
    etag = store.write_json_conditionally(REINDEX_RECORD, data, expected.etag if expected is not None else None)
    return ReindexRecord(version, recorded, mode, pending, claimed, etag)


def pointer_since(store: BlobModelStore, pointer: Pointer) -> float:
    """When `pointer`'s version became current, in seconds since the epoch: its `promoted` time, else (a
    pointer written by hand or by an older tool) current.json's Last-Modified. Raises StoreError."""
    import calendar

    try:
        return float(calendar.timegm(time.strptime(pointer.promoted, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        pass
    with store._errors(f"reading the properties of {POINTER}"):
        modified = store.container.get_blob_client(POINTER).get_blob_properties().last_modified
    return float(modified.timestamp())
