"""Create or update the search objects through azure-search-documents (`search-setup`, `migrate-skillset`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from shared.search import client as searchclient
from shared.search.templates import (
    AI_SERVICES_BY_IDENTITY,
    DEFAULT_KEY_ENV,
    WRITE_ORDER,
    SearchSetupError,
    search_endpoint_url,
)

# What azure-search-documents 12.0.0's typed calls send (its only known version; the SDK does not let one
# call choose another). tests/search/test_searchsetup.py checks that the SDK still sends it.
API_VERSION = "2026-04-01"
# For the objects that need preview features: the keyless billing below and the indexer's enrichment cache
# ("Configure an enrichment cache": preview REST APIs only; a GA version answers 400 "A resource without a
# type name was found, but no expected type was specified").
PREVIEW_API_VERSION = searchclient.PREVIEW_API_VERSION
SEARCH_SCOPE = searchclient.SEARCH_SCOPE
USER_AGENT = "automl-image-skill-search-setup"
COLLECTIONS = {
    "datasource": "datasources",
    "index": "indexes",
    "imageindex": "indexes",
    "skillset": "skillsets",
    "indexer": "indexers",
}
# Keyless billing (AIServicesByIdentity) is a preview feature: Microsoft Learn ("Attach a billable resource to a
# skillset") documents it on 2025-11-01-preview. Only the skillset that uses it is written with that version.
KEYLESS_BILLING_API_VERSION = PREVIEW_API_VERSION


class AccessTokenLike(Protocol):
    @property
    def token(self) -> str: ...


class TokenCredentialLike(Protocol):
    """What apply() needs of an azure-identity credential (DefaultAzureCredential)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessTokenLike: ...


def api_version_for(kind: str, body: Mapping[str, Any]) -> str:
    """The REST API version to write an object with: the SDK's API_VERSION, except PREVIEW_API_VERSION for
    a skillset billed keylessly and an indexer with an enrichment cache (`cache`, preview only)."""
    billing = body.get("cognitiveServices") if kind == "skillset" else None
    if isinstance(billing, dict) and billing.get("@odata.type") == AI_SERVICES_BY_IDENTITY:
        return KEYLESS_BILLING_API_VERSION
    if kind == "indexer" and body.get("cache") is not None:
        return PREVIEW_API_VERSION
    return API_VERSION


def _service_message(response: Any) -> str:
    """The service's `error.message` from an error response, on one line (empty when there is none)."""
    try:
        body = json.loads(response.text() or "{}")
    except (ValueError, TypeError, AttributeError):
        return ""
    message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        return ""
    return " ".join(message.split())[:500]


def _status_of(pipeline_response: Any, deserialized: Any, headers: Any) -> int:
    """`cls` hook for the SDK's typed calls: the HTTP status (201 created, 200 updated) instead of the model."""
    status: int = pipeline_response.http_response.status_code
    return status


def apply(
    rendered: Mapping[str, Mapping[str, Any]],
    search_endpoint: str,
    credential_or_key: str | TokenCredentialLike | Any,
) -> list[str]:
    """Create or update the data source, index, skillset and indexer, in that order, with
    azure-search-documents: `create_or_update_data_source_connection`, `create_or_update_index`,
    `create_or_update_skillset`, `create_or_update_indexer` on the SDK's API version (API_VERSION), each
    given the rendered dict, which the SDK sends as it is (a model built from a dict keeps the dict, and
    the SDK's encoder writes it back unchanged: the bytes sent are `json.dumps(rendered[kind])`). An object
    that needs a preview API version (api_version_for(): a skillset billed keylessly, an indexer with an
    enrichment cache) is the same PUT `/<collection>('<name>')` through the same client's pipeline
    (searchclient.send_preview), because the SDK's methods send only its own version.

    `credential_or_key` is an admin key (a str or an AzureKeyCredential, sent as `api-key`) or a token
    credential such as DefaultAzureCredential (a bearer token for https://search.azure.com/.default).
    Returns one line per object, like "index automl-images-index: created"; kinds missing from `rendered`
    are skipped (migrate-skillset writes only a skillset). Raises SearchSetupError on the first failure
    (unreachable service, refused credentials, an object the service rejects); objects before it stay as
    written.
    """
    from azure.core.credentials import AzureKeyCredential
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    endpoint = search_endpoint_url(search_endpoint)
    credential = AzureKeyCredential(credential_or_key) if isinstance(credential_or_key, str) else credential_or_key
    if searchclient.is_key(credential):
        refused_hint = "check that it is an admin key (not a query key) of this service"
        what = "the admin key"
    else:
        refused_hint = (
            "your identity needs the Search Service Contributor role on the service, and the service's API "
            "access control must allow role-based access"
        )
        what = "your Entra ID token"
    indexers = searchclient.indexer_client(endpoint, credential, user_agent=USER_AGENT)
    indexes = searchclient.index_client(endpoint, credential, user_agent=USER_AGENT)
    options = searchclient.call_options(endpoint, credential)
    typed: dict[str, Callable[..., Any]] = {
        "datasource": indexers.create_or_update_data_source_connection,
        "index": indexes.create_or_update_index,
        "imageindex": indexes.create_or_update_index,
        "skillset": indexers.create_or_update_skillset,
        "indexer": indexers.create_or_update_indexer,
    }
    done: list[str] = []
    with indexers, indexes:
        for kind in (k for k in WRITE_ORDER if k in rendered):
            body = dict(rendered[kind])
            name = str(body.get("name", ""))
            shown = "index" if kind == "imageindex" else kind
            version = api_version_for(kind, body)
            try:
                if version == API_VERSION:
                    status = int(typed[kind](body, cls=_status_of, **options))
                else:
                    path = f"/{COLLECTIONS[kind]}('{searchclient.quoted(name)}')"
                    response = searchclient.send_preview(
                        indexers, "PUT", path, api_version=version, body=body, **options
                    )
                    status = response.status_code
                    if status >= 400:
                        raise HttpResponseError(response=response)
            except (ServiceRequestError, ServiceResponseError) as exc:
                raise SearchSetupError(
                    f"search service {endpoint} is unreachable ({searchclient.reason(exc)})"
                ) from None
            except HttpResponseError as exc:
                failed = exc.response
                if failed is None and isinstance(exc, ClientAuthenticationError):
                    raise SearchSetupError(
                        "no Azure credential could get a token for Azure AI Search: sign in with `az login` (or run "
                        f"where a managed identity is available), or set {DEFAULT_KEY_ENV} (or --key-env NAME) to an "
                        "admin key"
                    ) from None
                code = exc.status_code or (failed.status_code if failed is not None else 0)
                phrase = (getattr(failed, "reason", None) or "").strip()
                status_text = f"{code} {phrase}".strip()
                if code in (401, 403):
                    raise SearchSetupError(
                        f"search service {endpoint} refused {what} ({status_text}) while writing the {shown} "
                        f"{name!r}: {refused_hint}"
                    ) from None
                detail = _service_message(failed) if failed is not None else ""
                raise SearchSetupError(
                    f"search service {endpoint} answered {status_text} to the {shown} {name!r}"
                    + (f": {detail}" if detail else "")
                ) from None
            done.append(f"{shown} {name}: {'created' if status == 201 else 'updated'}")
    return done
