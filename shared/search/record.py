"""`reindex.json`, the re-enrichment record beside `current.json` in the model store.

It remembers which version the search index was last re-enriched with, and the claim of a pass that is
re-enriching right now. It is written like current.json: If-Match the ETag that was read, If-None-Match *
when creating it, so two passes cannot both claim the same version.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.embedded import REINDEX_RECORD
from shared.modelstore.errors import StoreError
from shared.modelstore.pointer import POINTER, Pointer, check_version_name, utc_now

__all__ = ["REINDEX_RECORD", "ReindexRecord", "pointer_since", "read_reindex_record", "write_reindex_record"]


@dataclass(frozen=True)
class ReindexRecord:
    """`reindex.json` and the ETag it was read with.

    `version` is the version the index was last re-enriched with (or the baseline); `pending` is the version a
    pass has claimed and is re-enriching, with `claimed` the UTC time of the claim ("%Y-%m-%dT%H:%M:%SZ").
    `embedded` is the version whose re-enrichment has finished (the indexer's run after the reset ended with
    success), so every document's vectors come from it: the vectorizer answers with it
    (shared.modelstore.embedded). It trails `version` while the indexer's run goes on.
    """

    version: str
    recorded: str
    mode: str
    pending: str | None
    claimed: str | None
    etag: str
    embedded: str = ""

    def __post_init__(self) -> None:
        if not self.embedded:
            object.__setattr__(self, "embedded", self.version)


def read_reindex_record(store: BlobModelStore) -> ReindexRecord | None:
    """The record, or None when no pass has written one yet. Raises StoreError."""
    from azure.core.exceptions import ResourceNotFoundError

    blob = store.container.get_blob_client(REINDEX_RECORD)
    with store.errors(f"reading {REINDEX_RECORD}"):
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
            embedded=check_version_name(str(data["embedded"])) if data.get("embedded") else "",
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
    embedded: str | None = None,
) -> ReindexRecord:
    """Write the record conditionally: If-Match `expected.etag`, or If-None-Match * when `expected` is None.
    `embedded` defaults to `version` (a baseline, or a re-enrichment that has finished).

    Raises StoreConflict when the record changed since `expected` was read (another pass wrote it), StoreError
    for any other failure.
    """
    check_version_name(version)
    embedded = check_version_name(embedded or version)
    recorded = recorded or utc_now()
    data = {
        "version": version,
        "recorded": recorded,
        "mode": mode,
        "pending": pending,
        "claimed": claimed,
        "embedded": embedded,
    }
    etag = store.write_json_conditionally(REINDEX_RECORD, data, expected.etag if expected is not None else None)
    return ReindexRecord(version, recorded, mode, pending, claimed, etag, embedded)


def pointer_since(store: BlobModelStore, pointer: Pointer) -> float:
    """When `pointer`'s version became current, in seconds since the epoch: its `promoted` time, else (a
    pointer written by hand or by an older tool) current.json's Last-Modified. Raises StoreError."""
    import calendar

    try:
        return float(calendar.timegm(time.strptime(pointer.promoted, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        pass
    with store.errors(f"reading the properties of {POINTER}"):
        modified = store.container.get_blob_client(POINTER).get_blob_properties().last_modified
    return float(modified.timestamp())
