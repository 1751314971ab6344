"""The Custom Web API vectorizer contract (docs/vectors.md): Azure AI Search calls `/api/vectorize` at query time
with one record whose `data` holds `imageBinary` (`{"data": "<base64>"}`), `imageUrl` or `text`, and reads
`data.vector` from the answer (Microsoft Learn, "Custom Web API vectorizer": the payload is the custom Web API
skill's, one record per call).

Images only: `text` gets a per-record error. An `imageUrl` is read only when it is a blob of a storage account
the app is configured to read (VECTORIZE_IMAGE_ACCOUNTS and the model store's account), with the app's own
identity; any other URL is refused without being fetched.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.core.errors import ImageError
from shared.core.settings import Settings, connection_string_blob_url, is_loopback
from shared.inference.model import ImageLoader
from shared.skill.contract import SkillRecord, _base64_loader, _describe


@dataclass(frozen=True)
class BlobAccount:
    """A storage account the vectorizer may read: its blob endpoint (`https://<account>.blob.core.windows.net`,
    or Azurite's `http://127.0.0.1:<port>/<account>`) and, for the model store's account reached with a
    connection string, that string (a secret, never shown)."""

    url: str
    connection_string: str | None = None


def allowed_accounts(settings: Settings) -> list[BlobAccount]:
    """VECTORIZE_IMAGE_ACCOUNTS, plus the model store's account (the deployment keeps the images there too)."""
    accounts = [BlobAccount(url.rstrip("/")) for url in settings.vectorize_image_accounts]
    if settings.blob_account_url:
        accounts.append(BlobAccount(settings.blob_account_url.rstrip("/")))
    if settings.blob_connection_string:
        url = connection_string_blob_url(settings.blob_connection_string)
        if url:
            accounts.append(BlobAccount(url.rstrip("/"), settings.blob_connection_string))
    return accounts


def _blob_of(url: str, accounts: list[BlobAccount]) -> tuple[BlobAccount, str, str] | None:
    """(account, container, blob name) when `url` is a blob of one of `accounts`, else None."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("https", "http") or (parsed.scheme == "http" and not is_loopback(parsed.hostname)):
        return None
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        return None
    for account in accounts:
        base = urllib.parse.urlsplit(account.url)
        if (base.scheme, base.netloc.lower()) != (parsed.scheme, parsed.netloc.lower()):
            continue
        prefix = base.path.rstrip("/") + "/"
        if not parsed.path.startswith(prefix):
            continue
        container, _, name = parsed.path[len(prefix) :].partition("/")
        if container and name:
            return account, urllib.parse.unquote(container), urllib.parse.unquote(name)
    return None


_credentials: dict[str | None, Any] = {}
_credentials_lock = threading.Lock()


def _credential(client_id: str | None) -> Any:
    """One DefaultAzureCredential per identity for the process: it caches its tokens."""
    with _credentials_lock:
        if client_id not in _credentials:
            from azure.identity import DefaultAzureCredential

            _credentials[client_id] = DefaultAzureCredential(managed_identity_client_id=client_id)
        return _credentials[client_id]


def _blob_loader(account: BlobAccount, container: str, name: str, settings: Settings) -> ImageLoader:
    def load() -> bytes:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
        from azure.storage.blob import BlobClient

        where = f"blob {container}/{name} of {account.url}"
        if account.connection_string is not None:
            client = BlobClient.from_connection_string(account.connection_string, container, name)
        else:
            client = BlobClient(account.url, container, name, credential=_credential(settings.azure_client_id))
        limit = settings.max_image_bytes
        try:
            size = client.get_blob_properties().size
            if size > limit:
                raise ImageError(f"{where} is {size:,} bytes; the limit is {limit:,} bytes")
            return bytes(client.download_blob().readall())
        except ResourceNotFoundError:
            raise ImageError(f"{where} does not exist") from None
        except ClientAuthenticationError:
            raise ImageError(
                f"the app's identity may not read {where}: give it Storage Blob Data Reader on the account"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise ImageError(
                    f"the app's identity may not read {where}: give it Storage Blob Data Reader on the account"
                ) from None
            raise ImageError(f"reading {where} failed ({exc.status_code})") from None

    return load


TEXT_REFUSED = (
    "this vectorizer embeds images: send an imageBinary or imageUrl vector query (text queries need a text "
    "vectorizer on another field)"
)


def vectorizer_records(
    values: list[SkillRecord], raw: list[Any], settings: Settings, accounts: list[BlobAccount]
) -> list[SkillRecord]:
    """Each parsed record (parse_request's envelope checks) with its loader from `imageBinary` or an allowed
    `imageUrl`, or its error."""
    out: list[SkillRecord] = []
    for record, value in zip(values, raw, strict=True):
        loader, error = _vector_input(value.get("data"), settings, accounts)
        out.append(SkillRecord(record.record_id, loader, error))
    return out


def _vector_input(
    data: Any, settings: Settings, accounts: list[BlobAccount]
) -> tuple[Callable[[], bytes] | None, str | None]:
    if not isinstance(data, dict):
        return None, f'record has no "data" object (got {_describe(data)})'
    binary = data.get("imageBinary")
    if binary is not None:
        payload = binary.get("data") if isinstance(binary, dict) else binary
        if not isinstance(payload, str):
            return None, 'imageBinary must be an object {"data": "<base64 image>"}'
        return _base64_loader(payload, settings.max_image_bytes), None
    url = data.get("imageUrl")
    if url is not None:
        if not isinstance(url, str) or not url.strip():
            return None, f"imageUrl must be a URL string, got {_describe(url)}"
        found = _blob_of(url.strip(), accounts)
        if found is None:
            return None, (
                "imageUrl is not a blob of a storage account this app reads (VECTORIZE_IMAGE_ACCOUNTS or the model "
                "store's account), so it was not fetched: send the image as imageBinary, or add its account"
            )
        return _blob_loader(*found, settings), None
    if data.get("text") is not None:
        return None, TEXT_REFUSED
    return None, 'record has no image: "data" needs "imageBinary" ({"data": "<base64>"}) or "imageUrl"'
