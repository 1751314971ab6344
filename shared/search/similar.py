"""Search by example image: the nearest documents to a query vector, through azure-search-documents' vector query
(`VectorizedQuery` on the `imageEmbedding` field that `search-setup --vectors` creates; docs/vectors.md), on the
same IndexReader (client, credential, one-line errors) as the rest of `query`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.search.query import IndexReader

VECTOR_FIELD = "imageEmbedding"
# What a hit shows: the blob's name (either index shape has it), else the key.
_NAME_FIELDS = ("metadata_storage_name", "id")


@dataclass(frozen=True)
class Hit:
    """One nearest document: its `@search.score` (cosine: 1 / (1 + (1 - cosine similarity)); Learn, "Relevance in
    vector search"), a name (the blob's, else the key), its labels (the per-image index's `label`, else the
    document's `labels`) and its key."""

    score: float
    name: str
    labels: tuple[str, ...]
    key: str | None

    def as_json(self) -> dict[str, Any]:
        return {"score": self.score, "name": self.name, "labels": list(self.labels), "key": self.key}


def _hit(document: dict[str, Any]) -> Hit:
    name = next((str(document[f]) for f in _NAME_FIELDS if document.get(f)), "?")
    label = document.get("label")
    labels: tuple[str, ...]
    if isinstance(label, str):
        labels = (label,)
    else:
        raw = document.get("labels")
        labels = tuple(str(x) for x in raw) if isinstance(raw, list) else ()
    key = document.get("id")
    return Hit(float(document.get("@search.score") or 0.0), name, labels, str(key) if key is not None else None)


def nearest(reader: IndexReader, vector: Sequence[float], *, top: int = 5, field: str = VECTOR_FIELD) -> list[Hit]:
    """The `top` documents of the reader's index nearest to `vector` in `field`, best first. Raises QueryError."""
    from azure.search.documents.models import VectorizedQuery

    query = VectorizedQuery(vector=list(vector), k_nearest_neighbors=top, fields=field)
    with reader.errors(f"running a vector query on {field!r} of index {reader.index!r}"):
        results = reader.search_client().search(search_text=None, vector_queries=[query], top=top, **reader.options)
        return [_hit(dict(document)) for document in results]
