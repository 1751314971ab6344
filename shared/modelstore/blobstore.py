"""The Blob model store: immutable versions behind a pointer written last, conditionally (docs/model-store.md).

A version is complete exactly when its `manifest.json` exists: files are uploaded first, the manifest last,
and `current.json` (shared.modelstore.pointer) after that, If-Match the ETag read before. `azure.storage.blob`
is imported here only, lazily, inside the methods that call it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.bundle.layout import LABELS_FILE, MANIFEST_FILE, MODEL_FILE
from shared.core.settings import Settings, is_loopback, storage_connection_string
from shared.modelstore.errors import StoreConflict, StoreError, StoreUnreachable
from shared.modelstore.pointer import (
    POINTER,
    UNCHANGED,
    VERSION_PATTERN,
    Pointer,
    Unchanged,
    check_version_name,
    default_version,
    parse_pointer,
    utc_now,
)
from shared.modelstore.reads import Progress, download_version, read_manifest

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from shared.bundle.loader import ModelBundle

logger = logging.getLogger(__name__)

# Files a published version carries besides the manifest: the model, its labels, and license texts when
# the bundle has them (the sample does).
VERSION_FILES = (MODEL_FILE, LABELS_FILE, "NOTICE", "LICENSE")
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
    """What publish did, or with `dry_run` what it would do: `uploaded` (would upload), `promoted` (would move
    the pointer), `previous` (the version current.json named), `files` (the manifest's files: sha256, bytes)."""

    version: str
    uploaded: bool
    promoted: bool
    previous: str | None
    files: dict[str, Any] | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class PruneStep:
    """One version in a prune plan: deleted, or kept with the reason."""

    info: VersionInfo
    delete: bool
    reason: str


# An incomplete version (no manifest.json) younger than this may be an upload in progress: prune leaves it.
INCOMPLETE_GRACE_S = 3600


def plan_prune(
    versions: list[VersionInfo],
    *,
    current: str | None,
    protected: dict[str, str],
    keep: int | None,
    older_than_s: float | None,
    now: float,
    modified: dict[str, float],
) -> list[PruneStep]:
    """Which versions `prune` deletes, oldest first. Never the current version nor a `protected` one (version ->
    why, say the one re-enrichment last recorded). With `keep`, the `keep` newest complete versions stay; with
    `older_than_s`, only versions created longer ago than that go; with both, a version goes only when both
    say so. An incomplete version (an upload that never finished) goes when its newest file (`modified`: version
    -> seconds since the epoch) is older than INCOMPLETE_GRACE_S and `older_than_s`."""
    import calendar

    complete = [v for v in versions if v.complete]
    newest = {v.version for v in complete[len(complete) - keep :]} if keep else set()
    steps: list[PruneStep] = []
    for info in versions:
        if info.version == current:
            steps.append(PruneStep(info, False, "current"))
            continue
        if info.version in protected:
            steps.append(PruneStep(info, False, protected[info.version]))
            continue
        if not info.complete:
            age = now - modified.get(info.version, now)
            if age < max(INCOMPLETE_GRACE_S, older_than_s or 0):
                steps.append(PruneStep(info, False, "incomplete, changed recently: an upload may be in progress"))
            else:
                steps.append(PruneStep(info, True, "incomplete: an upload that never finished"))
            continue
        if info.version in newest:
            steps.append(PruneStep(info, False, f"one of the {keep} newest"))
            continue
        if older_than_s is not None:
            try:
                created = float(calendar.timegm(time.strptime(info.created or "", "%Y-%m-%dT%H:%M:%SZ")))
            except ValueError:
                steps.append(PruneStep(info, False, "no creation time in its manifest"))
                continue
            if now - created < older_than_s:
                steps.append(PruneStep(info, False, f"created less than {older_than_s / 86400:g} days ago"))
                continue
        steps.append(PruneStep(info, True, "older" if keep else "old enough"))
    return steps


# Decides, from the current pointer (None when nothing is published) and the new version's manifest,
# whether publishing also moves the pointer.
PromotePolicy = Callable[[Pointer | None, dict[str, Any]], bool]


def always_promote(current: Pointer | None, manifest: dict[str, Any]) -> bool:
    return True


def never_promote(current: Pointer | None, manifest: dict[str, Any]) -> bool:
    """Upload and verify only (`publish --no-promote`): `promote` moves the pointer once checked."""
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text[:200]


def public_url(url: str) -> str:
    """`url` without its query: a container URL as it may be shown, never with a SAS token."""
    return url.split("?", 1)[0]


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
        `retries`: retries of a failed request (the cold-start prefetch makes one attempt only). Raises StoreError
        (one line, never a key) when the storage SDK or azure-identity refuses the settings."""
        from azure.storage.blob import ContainerClient

        if settings.blob_connection_string:
            try:
                client = ContainerClient.from_connection_string(
                    storage_connection_string(settings.blob_connection_string),
                    settings.blob_container,
                    **client_options(retries),
                )
            except ValueError:
                raise StoreError("MODEL_BLOB_CONNECTION_STRING is not a valid storage connection string") from None
            return cls(client)
        if settings.blob_account_url:
            from azure.identity import DefaultAzureCredential

            try:
                credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
            except ValueError as exc:  # the AZURE_* environment names an unknown or incomplete credential
                # Its first line in full: azure-identity lists the values AZURE_TOKEN_CREDENTIALS accepts.
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise StoreError(f"no usable credential for MODEL_BLOB_ACCOUNT_URL: {reason}") from None
            try:
                client = ContainerClient(
                    settings.blob_account_url, settings.blob_container, credential=credential, **client_options(retries)
                )
            except ValueError as exc:  # for one, a token credential over plain http
                raise StoreError(
                    f"MODEL_BLOB_ACCOUNT_URL cannot be used ({public_url(_reason(exc))}); expected "
                    "https://<account>.blob.core.windows.net"
                ) from None
            return cls(client)
        return None

    def _hint(self) -> str:
        """What to do about an unreachable store on a loopback address: it is Azurite, not started."""
        host = urllib.parse.urlsplit(self.description).hostname
        if not is_loopback(host):
            return ""
        return (
            "; that is Azurite on this machine: start it with `make azurite`, or remove "
            "MODEL_BLOB_CONNECTION_STRING (from the environment or local.settings.json) to serve the bundled model"
        )

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
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
                f"model store {self.description} is unreachable while {action} ({_reason(exc)}){self._hint()}"
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

        with self.errors("creating the container"), suppress(ResourceExistsError):
            self.container.create_container()

    # -- the pointer -------------------------------------------------------------------------------------

    def read_pointer(self, known_etag: str | None = None) -> Pointer | Unchanged | None:
        """`current.json`: a Pointer, None when nothing is published, or UNCHANGED when its ETag is still
        `known_etag` (a conditional GET, so polling costs one small request)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError, ResourceNotModifiedError

        blob = self.container.get_blob_client(POINTER)
        with self.errors("reading current.json"):
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
        with self.errors(f"writing {name}"):
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
        promoted = utc_now()
        data = {"version": version, "manifest_sha256": manifest_sha, "promoted": promoted, "metric": metric}
        etag = self.write_json_conditionally(POINTER, data, current.etag if current is not None else None)
        return Pointer(version, manifest_sha, promoted, metric, etag)

    def _move_pointer(
        self, version: str, manifest: dict[str, Any], manifest_sha: str, policy: PromotePolicy
    ) -> tuple[bool, str | None]:
        for _ in range(5):
            current = self.read_pointer()
            assert not isinstance(current, Unchanged)
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

        with self.errors(action):
            try:
                downloader = self.container.get_blob_client(name).download_blob()
                return downloader.readall(), downloader.properties.etag
            except ResourceNotFoundError:
                return None

    def blob_chunks(self, name: str, action: str) -> Iterator[bytes]:
        """BlobReads: the blob's bytes as they arrive."""
        with self.errors(action):
            yield from self.container.get_blob_client(name).download_blob().chunks()

    def _version_folders(self) -> list[str]:
        """The names of the top-level folders; none when the container does not exist yet."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import BlobPrefix

        with self.errors("listing versions"):
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

    def version_modified(self, version: str) -> float:
        """When the newest file of `version` was written, in seconds since the epoch (0 when it has none)."""
        with self.errors(f"listing version {version}"):
            times = [b.last_modified.timestamp() for b in self.container.list_blobs(name_starts_with=f"{version}/")]
        return max(times, default=0.0)

    def delete_version(self, version: str) -> int:
        """Delete every file of `version`, its manifest first (so no reader starts downloading a version whose
        files are going). Refuses the version current.json names, read just before. Returns the files deleted."""
        from azure.core.exceptions import ResourceNotFoundError

        check_version_name(version)
        pointer = self.read_pointer()
        if isinstance(pointer, Pointer) and pointer.version == version:
            raise StoreError(f"version {version} is current in {self.description}; promote another before deleting it")
        with self.errors(f"deleting version {version}"):
            names = sorted(
                (b.name for b in self.container.list_blobs(name_starts_with=f"{version}/")),
                key=lambda name: name != f"{version}/{MANIFEST_FILE}",
            )
            for name in names:
                with suppress(ResourceNotFoundError):
                    self.container.delete_blob(name)
        return len(names)

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
        dry_run: bool = False,
    ) -> PublishResult:
        """Upload a bundle folder or AutoML run folder as a version, then move the pointer per `policy`.

        `validate` (for example opening an Engine) runs before anything is uploaded. Without `version`, the
        name is the run id named by the source, else the content name (bundle.content_version), and content
        that the store already holds under any name reuses that name (nothing is uploaded). Publishing the
        same content under the same version again uploads nothing; different content under an existing
        version is refused (versions are immutable). `policy=never_promote` uploads without moving the pointer.
        `dry_run` checks and names everything the same way, reads the store, and writes nothing.
        """
        from shared.bundle.loader import build_manifest, load_bundle  # numpy: not on the prefetch's path

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
            embedding: dict[str, Any] | None = None
            if bundle.embedding is not None:
                # The stored model carries its embedding output, so every reader serves the same graph.
                from shared.bundle.embedding import manifest_entry

                edited, embedding = manifest_entry(bundle.model_path.read_bytes())
                if edited is not None:
                    (staged / MODEL_FILE).write_bytes(edited)
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
                embedding=embedding,
            )
            if version is None and (same := self.same_content(manifest)) is not None:
                chosen = same
                manifest["version"] = same
            if dry_run:
                return self._publish_plan(chosen, manifest, policy)
            uploaded = self._upload_version(staged, chosen, manifest, progress)
        found = self.read_manifest(chosen)
        if found is None:
            raise StoreError(f"version {chosen} vanished from {self.description} right after upload")
        stored_manifest, manifest_sha = found
        moved, previous = self._move_pointer(chosen, stored_manifest, manifest_sha, policy)
        return PublishResult(version=chosen, uploaded=uploaded, promoted=moved, previous=previous)

    def _publish_plan(self, version: str, manifest: dict[str, Any], policy: PromotePolicy) -> PublishResult:
        """What publish would do with `manifest` under `version`: the same refusal for other files under an
        existing name, and the policy asked about the pointer as it is now."""
        existing = self.read_manifest(version)
        if existing is not None and existing[0]["files"] != manifest["files"]:
            raise StoreError(
                f"version {version} already exists in {self.description} with different files; versions are "
                "immutable: publish under another --version"
            )
        current = self.read_pointer()
        assert not isinstance(current, Unchanged)
        previous = current.version if current is not None else None
        promotes = previous != version and policy(current, existing[0] if existing else manifest)
        return PublishResult(
            version=version,
            uploaded=existing is None,
            promoted=promotes,
            previous=previous,
            files=manifest["files"],
            dry_run=True,
        )

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
        with self.errors(f"uploading version {version}"):
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
