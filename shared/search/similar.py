"""Search by example image: the nearest documents to a query vector, through azure-search-documents' vector query
(`VectorizedQuery` on the `imageEmbedding` field that `search-setup --vectors` creates; docs/vectors.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.core.errors import AppError
from shared.search import client as searchclient

VECTOR_FIELD = "imageEmbedding"
USER_AGENT = "automl-image-skill-query"
# What a hit shows: the per-image index's fields, else the document index's.
_NAME_FIELDS = ("metadata_storage_name", "id")


class QueryError(AppError):
    """A query cannot be answered; one line naming what to fix (never a key)."""


@dataclass(frozen=True)
class Hit:
    """One nearest document: its `@search.score` (cosine: 1 / (1 + (1 - cosine similarity))), a name (the blob's
    name, else the key), its labels (the per-image `label`, else the document's `labels`) and the key."""

    score: float
    name: str
    labels: tuple[str, ...]
    key: str | None


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


def nearest(
    endpoint: str,
    credential: Any,
    index: str,
    vector: Sequence[float],
    *,
    top: int = 5,
    field: str = VECTOR_FIELD,
) -> list[Hit]:
    """The `top` documents of `index` nearest to `vector` in `field`, best first. Raises QueryError."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.search.documents import SearchClient
    from azure.search.documents.models import VectorizedQuery

    where = f"search service {endpoint}"
    client = SearchClient(endpoint, index, credential, **searchclient.client_options(USER_AGENT))
    query = VectorizedQuery(vector=list(vector), k_nearest_neighbors=top, fields=field)
    try:
        with client:
            results = client.search(search_text=None, vector_queries=[query], top=top)
            return [_hit(dict(document)) for document in results]
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise QueryError(f"{where} is unreachable ({searchclient.reason(exc)})") from None
    except ClientAuthenticationError as exc:
        if getattr(exc, "status_code", None) is None:  # azure.identity got no token: the service never answered
            raise QueryError(
                f"no credential for {where}: `az login` (Search Index Data Reader on the service), or set "
                "SEARCH_ADMIN_KEY to a key of the service"
            ) from None
        raise QueryError(
            f"{where} refused the credentials: set SEARCH_ADMIN_KEY to a key of the service, or give your identity "
            "the Search Index Data Reader role"
        ) from None
    except ResourceNotFoundError:
        raise QueryError(
            f"index {index!r} does not exist on {where}: pass --index, or run search-setup --vectors"
        ) from None
    except HttpResponseError as exc:
        if exc.status_code == 403:
            raise QueryError(
                f"{where} refused the credentials (403): give your identity the Search Index Data Reader role, or set "
                "SEARCH_ADMIN_KEY"
            ) from None
        raise QueryError(
            f"{where} answered {exc.status_code} to the vector query on {field!r} of index {index!r}: "
            f"{searchclient.reason(exc)} (does the index have the vector field? search-setup --vectors creates it)"
        ) from None
