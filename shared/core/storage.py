"""Opening a Blob storage account for the commands that copy blobs (`to-label`): from a connection string in an
environment variable, or from an account URL with DefaultAzureCredential. azure-storage-blob is imported lazily."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from shared.core.errors import AppError
from shared.core.settings import is_loopback, storage_connection_string

RETRIES = 3


class StorageSettingError(AppError):
    """A storage account cannot be opened from what the command was given; one line, never a key."""


def connection_string_from(env: Mapping[str, str], name: str, flag: str, alternative: str) -> str:
    """The connection string held by environment variable `name` (named with `flag`); one clear line when it is
    not set."""
    value = env.get(name, "").strip()
    if not value:
        raise StorageSettingError(
            f"environment variable {name} ({flag}) is not set: put the storage account's connection string there "
            f"(UseDevelopmentStorage=true for Azurite), or use {alternative}"
        )
    return value


def check_account_url(url: str, what: str) -> str:
    """An account URL DefaultAzureCredential's token may be sent to: https, or plain http to a loopback address."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname or (
        parsed.scheme != "https" and not (parsed.scheme == "http" and is_loopback(parsed.hostname))
    ):
        raise StorageSettingError(
            f"{what} {url!r} is invalid: expected https://<account>.blob.core.windows.net (plain http only to a "
            "loopback address)"
        )
    return url.rstrip("/")


def open_service(
    *, connection_string: str | None = None, account_url: str | None = None, client_id: str | None = None,
    user_agent: str = "automl-image-skill",
) -> Any:  # fmt: skip
    """A BlobServiceClient from a connection string (`UseDevelopmentStorage=true` is Azurite) or an account URL with
    DefaultAzureCredential (`client_id`: a user-assigned managed identity)."""
    from azure.storage.blob import BlobServiceClient

    options: dict[str, Any] = {"retry_total": RETRIES, "user_agent": user_agent}
    if connection_string:
        try:
            return BlobServiceClient.from_connection_string(storage_connection_string(connection_string), **options)
        except ValueError:
            raise StorageSettingError("the connection string is not a valid storage connection string") from None
    if not account_url:
        raise StorageSettingError("no storage account: give a connection string or an account URL")
    from azure.identity import DefaultAzureCredential

    return BlobServiceClient(account_url, credential=DefaultAzureCredential(managed_identity_client_id=client_id),
                             **options)  # fmt: skip


def credential(client_id: str | None = None) -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)
