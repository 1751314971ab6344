"""`python -m shared keyframes`: the videos of one Blob container to JPEG keyframes in another.

Each keyframe is the blob `<video name>/<timestamp_ms, 9 digits>.jpg` (Content-Type image/jpeg) with the metadata
the keyframes indexer maps to index fields (`search-setup --keyframes`):

- `source_video`: the video's blob name, percent-encoded (blob metadata are HTTP headers: ASCII only; the
  indexer's field mapping decodes it with `urlDecode`);
- `timestamp_ms`: milliseconds from the start of the video, decimal, zero-padded to 9 digits (sorts as text);
- `frame_index`: the frame's number in the video; `keyframe_mode`: the options it was chosen with;
- `source_etag`: the ETag of the video that was decoded.

When every keyframe of a video is written, a record `<video name>/keyframes.json` follows, with the metadata
`AzureSearch_Skip: true` (the blob indexer skips such a blob) and the ETag and options. A later run skips a video
whose record has the same ETag and options; it never deletes anything. A video changed meanwhile, or extracted
with other options, is extracted again (its new keyframes overwrite those of the same names).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from shared.core.errors import AppError
from shared.video.frames import FrameOptions, VideoError, duration_s, extract

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

logger = logging.getLogger(__name__)

RECORD_NAME = "keyframes.json"
TIMESTAMP_DIGITS = 9
DEFAULT_SOURCE = "videos"
DEFAULT_TARGET = "keyframes"
RETRIES = 3
USER_AGENT = "automl-image-skill-keyframes"


class KeyframesError(AppError):
    """The run cannot go on (a missing container, refused credentials, an unreachable account); one line."""


@dataclass(frozen=True)
class VideoOutcome:
    """What happened to one video: `status` written, skipped or failed; `frames` keyframes written; `message`
    one line for the user."""

    video: str
    status: str
    frames: int
    message: str


class Progress(Protocol):
    """Progress of the current video: `start(video, duration_s or None)`, `advance(seconds into the video)`,
    `finish()`."""

    def start(self, video: str, duration: float | None) -> None: ...

    def advance(self, seconds: float) -> None: ...

    def finish(self) -> None: ...


def keyframe_name(video: str, timestamp_ms: int) -> str:
    """The keyframe's blob name: `<video>/<timestamp_ms zero-padded to 9 digits>.jpg`."""
    return f"{video}/{timestamp_ms:0{TIMESTAMP_DIGITS}d}.jpg"


def record_name(video: str) -> str:
    return f"{video}/{RECORD_NAME}"


def encode_name(video: str) -> str:
    """A blob name as an ASCII metadata value: percent-encoded (the indexer's `urlDecode` mapping reverses it)."""
    return urllib.parse.quote(video, safe="/")


def keyframe_metadata(video: str, timestamp_ms: int, frame_index: int, mode: str, etag: str) -> dict[str, str]:
    return {
        "source_video": encode_name(video),
        "timestamp_ms": f"{timestamp_ms:0{TIMESTAMP_DIGITS}d}",
        "frame_index": str(frame_index),
        "keyframe_mode": mode,
        "source_etag": etag,
    }


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:200]


def open_service(
    *, connection_string: str | None = None, account_url: str | None = None, client_id: str | None = None
) -> BlobServiceClient:
    """A BlobServiceClient from a connection string (`UseDevelopmentStorage=true` is Azurite) or from an account URL
    with DefaultAzureCredential (AZURE_CLIENT_ID names a user-assigned managed identity). KeyframesError for a bad
    connection string, or an account URL that is not https (plain http only to a loopback address)."""
    from shared.core.storage import StorageSettingError, check_account_url
    from shared.core.storage import open_service as open_account

    if not connection_string and not account_url:
        raise KeyframesError(
            "no storage account: pass --connection-string-env NAME (a variable holding a connection string) or "
            "--account-url https://<account>.blob.core.windows.net"
        )
    try:
        if not connection_string:
            account_url = check_account_url(str(account_url), "account URL")
        service: BlobServiceClient = open_account(
            connection_string=connection_string, account_url=account_url, client_id=client_id, user_agent=USER_AGENT
        )
    except StorageSettingError as exc:
        raise KeyframesError(str(exc)) from None
    return service


@contextmanager
def storage_errors(where: str, action: str) -> Iterator[None]:
    """The storage SDK's exceptions as one KeyframesError line."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except KeyframesError:
        raise
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise KeyframesError(f"storage account {where} is unreachable while {action} ({_reason(exc)})") from None
    except ClientAuthenticationError as exc:
        if exc.__class__.__name__ == "CredentialUnavailableError" or str(exc).startswith("DefaultAzureCredential"):
            raise KeyframesError(
                f"no credential for storage account {where}: sign in with `az login` (or run where a managed "
                "identity is available), or pass --connection-string-env NAME"
            ) from None
        raise KeyframesError(
            f"storage account {where} refused the credentials while {action}: the identity needs 'Storage Blob "
            "Data Contributor' on the account (Reader on the videos' container is enough for reading)"
        ) from None
    except ResourceNotFoundError as exc:
        raise KeyframesError(f"not found in storage account {where} while {action} ({_reason(exc)})") from None
    except HttpResponseError as exc:
        if exc.status_code == 403:
            raise KeyframesError(
                f"storage account {where} denied access while {action}: the identity needs 'Storage Blob Data "
                "Contributor' on the account"
            ) from None
        raise KeyframesError(f"storage account {where} answered {exc.status_code} while {action}") from None


class KeyframeRun:
    """One `keyframes` run over the videos of `source` into `target` (two containers of one account)."""

    def __init__(self, service: BlobServiceClient, source: str, target: str, options: FrameOptions) -> None:
        if source == target:
            raise KeyframesError(
                f"--source-container and --target-container are both {source!r}: keyframes go to another container"
            )
        self.service = service
        self.where = service.url.split("?", 1)[0].rstrip("/")
        self.source_name = source
        self.target_name = target
        self.source: ContainerClient = service.get_container_client(source)
        self.target: ContainerClient = service.get_container_client(target)
        self.options = options

    def check_containers(self) -> bool:
        """KeyframesError when the source container does not exist; creates the target when it does not (True)."""
        from azure.core.exceptions import ResourceExistsError

        with storage_errors(self.where, f"reading container {self.source_name!r}"):
            if not self.source.exists():
                raise KeyframesError(
                    f"container {self.source_name!r} does not exist in {self.where}: upload the videos there, or pass "
                    "--source-container NAME"
                )
        with storage_errors(self.where, f"creating container {self.target_name!r}"):
            if self.target.exists():
                return False
            try:
                self.target.create_container()
            except ResourceExistsError:
                return False
            return True

    def videos(self) -> list[tuple[str, str]]:
        """(name, ETag) of every blob in the source container, by name."""
        with storage_errors(self.where, f"listing container {self.source_name!r}"):
            return sorted((blob.name, _etag(blob.etag)) for blob in self.source.list_blobs())

    def done_before(self, video: str, etag: str) -> bool:
        """Whether a record says this video, at this ETag, was extracted with the same options."""
        from azure.core.exceptions import ResourceNotFoundError

        with storage_errors(self.where, f"reading the record of {video!r}"):
            try:
                raw = self.target.get_blob_client(record_name(video)).download_blob().readall()
            except ResourceNotFoundError:
                return False
        try:
            record = json.loads(raw)
        except ValueError:
            return False
        return (
            isinstance(record, dict)
            and record.get("sourceEtag") == etag
            and record.get("options") == self.options.describe()
        )

    def _download(self, video: str, etag: str, folder: Path) -> Path:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError

        path = folder / ("video" + Path(video).suffix.lower()[:10])
        with storage_errors(self.where, f"downloading {video!r}"), path.open("wb") as handle:
            try:
                self.source.get_blob_client(video).download_blob(
                    etag=f'"{etag}"', match_condition=MatchConditions.IfNotModified
                ).readinto(handle)
            except ResourceModifiedError:
                raise VideoError("changed while it was being read: run keyframes again") from None
        return path

    def _write(self, name: str, data: bytes, metadata: dict[str, str], content_type: str, action: str) -> None:
        from azure.storage.blob import ContentSettings

        with storage_errors(self.where, action):
            self.target.get_blob_client(name).upload_blob(
                data, overwrite=True, metadata=metadata, content_settings=ContentSettings(content_type=content_type)
            )

    def extract_one(self, video: str, etag: str, progress: Progress | None = None) -> VideoOutcome:
        """Decode one video and write its keyframes, then its record. A video that cannot be decoded is a failed
        outcome (nothing written); KeyframesError (storage) ends the run."""
        started = time.monotonic()
        mode = self.options.describe()
        timestamps: list[int] = []
        with tempfile.TemporaryDirectory(prefix="keyframes-") as folder:
            try:
                path = self._download(video, etag, Path(folder))
                if progress is not None:
                    progress.start(video, duration_s(path))
                for frame in extract(path, self.options, progress.advance if progress is not None else None):
                    name = keyframe_name(video, frame.timestamp_ms)
                    metadata = keyframe_metadata(video, frame.timestamp_ms, frame.frame_index, mode, etag)
                    self._write(name, frame.jpeg, metadata, "image/jpeg", f"writing {name!r}")
                    timestamps.append(frame.timestamp_ms)
            except VideoError as exc:
                return VideoOutcome(video, "failed", len(timestamps), f"{video}: {exc}")
            finally:
                if progress is not None:
                    progress.finish()
        record = {
            "sourceVideo": video,
            "sourceEtag": etag,
            "options": mode,
            "keyframes": len(timestamps),
            "timestampsMs": timestamps,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write(
            record_name(video),
            json.dumps(record, indent=1).encode(),
            {"AzureSearch_Skip": "true", "source_etag": etag},
            "application/json",
            f"writing the record of {video!r}",
        )
        seconds = time.monotonic() - started
        return VideoOutcome(
            video,
            "written",
            len(timestamps),
            f"{video}: {len(timestamps)} keyframes ({mode}) written to {self.target_name}/{video}/ in {seconds:.1f} s",
        )

    def run(
        self,
        on_outcome: Callable[[VideoOutcome], None],
        progress: Progress | None = None,
        *,
        checked: bool = False,
    ) -> list[VideoOutcome]:
        """Every video of the source container, in name order: skipped when done before, else extracted.
        `on_outcome` hears each video's outcome as soon as it is known; `checked`: check_containers() was called
        already. KeyframesError for a missing source container or a storage failure (the videos before it stay
        written)."""
        if not checked:
            self.check_containers()
        outcomes = []
        for video, etag in self.videos():
            if self.done_before(video, etag):
                outcome = VideoOutcome(
                    video,
                    "skipped",
                    0,
                    f"{video}: skipped (already done at ETag {etag} with {self.options.describe()})",
                )
            else:
                outcome = self.extract_one(video, etag, progress)
            logger.info("%s", outcome.message)
            on_outcome(outcome)
            outcomes.append(outcome)
        return outcomes
