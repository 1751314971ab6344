"""The one place that builds azure-search-documents clients for the search service: `search-setup`,
`migrate-skillset` and re-enrichment (`reindex`, RefreshModel) all call the service through them.

The credential is an admin key (`AzureKeyCredential`, sent as `api-key`) when one is given, else
`DefaultAzureCredential` (the managed identity named by AZURE_CLIENT_ID in Azure, `az login` locally; a
bearer token for https://search.azure.com/.default). Calls the SDK has a method for use that method, on
the SDK's default API version; calls it has none for (preview API versions, preview-only properties) go
through the same client's pipeline with send_preview(): the same credential, retries, timeouts and user
agent, never a second HTTP stack.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from shared.core.settings import is_loopback

if TYPE_CHECKING:
    from azure.core.rest import HttpResponse
    from azure.search.documents.indexes import SearchIndexClient, SearchIndexerClient

# Fail fast: a CLI user or the next RefreshModel tick tries again. azure-core's default is 10 retries with
# exponential backoff, minutes before a wrong endpoint is reported.
RETRIES = 2
RETRY_BACKOFF_S = 0.5
CONNECTION_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
USER_AGENT = "automl-image-skill"
SEARCH_SCOPE = "https://search.azure.com/.default"
# The newest preview Microsoft Learn lists ("REST API versions": 2025-11-01-preview), for every call that needs
# a preview feature: the indexer's enrichment cache, Reset Skills, keyless AI Services billing.
PREVIEW_API_VERSION = "2025-11-01-preview"
# urllib3's messages wrapped in requests' "HTTPConnectionPool(...): Max retries exceeded ... (Caused by ...)".
_TRANSPORT_REASONS = (
    re.compile(r"Failed to establish a new connection:\s*([^']+)"),
    re.compile(r"(Failed to resolve '[^']*' \([^)]*\))"),
    re.compile(r"(Read timed out\.?|Connection aborted\.?)"),
)


def credential(admin_key: str | None, client_id: str | None = None) -> Any:
    """`AzureKeyCredential(admin_key)` when a key is given, else `DefaultAzureCredential` with
    `client_id` as the user-assigned managed identity's client id (None: system-assigned, or `az login`)."""
    if admin_key:
        from azure.core.credentials import AzureKeyCredential

        return AzureKeyCredential(admin_key)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)


def is_key(value: Any) -> bool:
    """Whether `value` is an admin key credential (for messages: which credential the service refused)."""
    from azure.core.credentials import AzureKeyCredential

    return isinstance(value, AzureKeyCredential)


def client_options(user_agent: str = USER_AGENT) -> dict[str, Any]:
    """Keyword arguments every client is built with: retries, timeouts (seconds), user agent prefix."""
    return {
        "retry_total": RETRIES,
        "retry_backoff_factor": RETRY_BACKOFF_S,
        "connection_timeout": CONNECTION_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "user_agent": user_agent,
    }


def call_options(endpoint: str, credential: Any) -> dict[str, Any]:
    """Per-call options. azure-core refuses to send a bearer token over plain http; endpoints are validated
    to be https except a loopback address (a stand-in service on the same host), which may receive one. Only
    the bearer token policy takes the option (the transport would refuse it), so a key gets none."""
    parsed = urllib.parse.urlsplit(endpoint)
    local = parsed.scheme == "http" and is_loopback(parsed.hostname)
    return {"enforce_https": False} if local and not is_key(credential) else {}


def indexer_client(endpoint: str, credential: Any, *, user_agent: str = USER_AGENT) -> SearchIndexerClient:
    """A SearchIndexerClient (data sources, skillsets, indexers, and send_preview())."""
    from azure.search.documents.indexes import SearchIndexerClient

    return SearchIndexerClient(endpoint, credential, **client_options(user_agent))


def index_client(endpoint: str, credential: Any, *, user_agent: str = USER_AGENT) -> SearchIndexClient:
    """A SearchIndexClient (indexes) with the same credential and options."""
    from azure.search.documents.indexes import SearchIndexClient

    return SearchIndexClient(endpoint, credential, **client_options(user_agent))


def send_preview(
    client: SearchIndexerClient | SearchIndexClient,
    method: str,
    path: str,
    *,
    api_version: str,
    body: Any = None,
    **options: Any,
) -> HttpResponse:
    """One request through `client`'s own pipeline: `path` relative to the endpoint (the OData form the SDK
    uses, `/indexers('name')`), `api-version` as given, `body` serialized with json.dumps (the same bytes the
    SDK's typed calls send for a dict). The headers are the SDK's: `Accept` OData minimal metadata, and for a
    PUT `Prefer: return=representation`. Returns the response whatever its status (the caller maps errors);
    raises azure-core's ServiceRequestError / ServiceResponseError when the service cannot be reached, and
    ClientAuthenticationError when no token can be had."""
    from azure.core.rest import HttpRequest

    headers = {"Accept": "application/json;odata.metadata=minimal"}
    if method == "PUT":
        headers["Prefer"] = "return=representation"
    request = HttpRequest(method, path, params={"api-version": api_version}, headers=headers, json=body)
    response: HttpResponse = client.send_request(request, **options)
    return response


def quoted(name: str) -> str:
    """An object name for the OData key form `('name')` of a URL path."""
    return urllib.parse.quote(name.replace("'", "''"), safe="")


def reason(exc: BaseException) -> str:
    """A transport error as a short phrase, one line: urllib3's 'Failed to establish a new connection: [Errno
    111] Connection refused' becomes '[Errno 111] Connection refused', a DNS failure "Failed to resolve 'host'
    ([Errno -2] Name or service not known)"; anything else its first line, at most 300 characters."""
    text = str(getattr(exc, "message", None) or exc)
    for pattern in _TRANSPORT_REASONS:
        found = pattern.search(text)
        if found:
            return found.group(1).strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else exc.__class__.__name__)[:300]
