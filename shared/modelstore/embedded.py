"""Which model version the search index's vectors come from, as `reindex.json` in the model store records it.

Re-enrichment (shared.search.reindex) writes the record; the vectorizer (shared.skill.service) reads it so
that query vectors come from the version the indexed vectors came from: `embedded` names the version whose
re-enrichment has finished (the indexer's run after the reset ended with success), or the baseline. A record
written before embeddings existed has no `embedded`; its `version` is taken, unless a pass is still pending.
"""

from __future__ import annotations

import json
from typing import Any

from shared.modelstore.errors import StoreError
from shared.modelstore.pointer import check_version_name
from shared.modelstore.reads import BlobReads

REINDEX_RECORD = "reindex.json"


def embedded_version_of(data: Any) -> str | None:
    """The version the index's vectors come from, from a parsed record; None when it does not say."""
    if not isinstance(data, dict):
        return None
    value = data.get("embedded") or data.get("version")
    if not isinstance(value, str) or not value:
        return None
    try:
        return check_version_name(value)
    except StoreError:
        return None


def read_embedded_version(reads: BlobReads) -> str | None:
    """The version the index was embedded with, or None when no re-enrichment record exists. Raises
    StoreError when the store cannot be read."""
    found = reads.read_blob(REINDEX_RECORD, f"reading {REINDEX_RECORD}")
    if found is None:
        return None
    try:
        data = json.loads(found[0])
    except ValueError:
        return None
    return embedded_version_of(data)
