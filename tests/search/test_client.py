"""shared.search.client: the one place that builds the search clients (credential, options, preview calls)."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ServiceRequestError

from shared.search import client as searchclient
from tests.searchstub import SearchStub


@pytest.fixture
def stub(search_stubs: Any) -> SearchStub:
    return search_stubs(pipeline=True)


def test_a_key_is_an_azure_key_credential_else_default_azure_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import DefaultAzureCredential

    key = searchclient.credential("admin-key")
    assert isinstance(key, AzureKeyCredential) and key.key == "admin-key" and searchclient.is_key(key)
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(DefaultAzureCredential, "__init__", lambda self, **kwargs: built.append(kwargs))
    assert isinstance(searchclient.credential(None, "client-1"), DefaultAzureCredential)
    assert isinstance(searchclient.credential("", None), DefaultAzureCredential)
    assert built == [{"managed_identity_client_id": "client-1"}, {"managed_identity_client_id": None}]


def test_every_client_gets_the_same_options() -> None:
    client = searchclient.indexer_client("https://s.search.windows.net", AzureKeyCredential("k"), user_agent="ua")
    index = searchclient.index_client("https://s.search.windows.net", AzureKeyCredential("k"), user_agent="ua")
    for built in (client, index):
        config = built._config
        assert config.retry_policy.total_retries == searchclient.RETRIES
        assert config.user_agent_policy.user_agent.startswith("ua azsdk-python-search-documents/")


@pytest.mark.parametrize(
    ("endpoint", "token", "options"),
    [
        ("http://127.0.0.1:8080", True, {"enforce_https": False}),
        ("http://localhost:8080", True, {"enforce_https": False}),
        ("http://127.0.0.1:8080", False, {}),  # a key: only the bearer token policy takes the option
        ("https://s.search.windows.net", True, {}),
    ],
)
def test_call_options_allow_a_token_over_http_only_to_this_machine(
    endpoint: str, token: bool, options: dict[str, Any]
) -> None:
    credential: Any = object() if token else AzureKeyCredential("k")
    assert searchclient.call_options(endpoint, credential) == options


def test_send_preview_goes_through_the_clients_pipeline(stub: SearchStub) -> None:
    client = searchclient.indexer_client(stub.endpoint, AzureKeyCredential(stub.key), user_agent="ua")
    response = searchclient.send_preview(
        client, "GET", f"/indexers('{searchclient.quoted('automl-images-indexer')}')", api_version="2025-11-01-preview"
    )
    assert response.status_code == 200 and "cache" in response.json()
    (request,) = stub.requests
    assert request.query == {"api-version": "2025-11-01-preview"}
    assert request.headers["api-key"] == stub.key
    assert request.headers["Accept"] == "application/json;odata.metadata=minimal"
    assert request.headers["User-Agent"].startswith("ua azsdk-python-search-documents/")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /x (Caused by "
            "NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new "
            "connection: [Errno 111] Connection refused'))",
            "[Errno 111] Connection refused",
        ),
        (
            "HTTPSConnectionPool(host='x.invalid', port=443): Max retries exceeded with url: /x (Caused by "
            "NameResolutionError(\"HTTPSConnection(host='x.invalid', port=443): Failed to resolve 'x.invalid' "
            '([Errno -2] Name or service not known)"))',
            "Failed to resolve 'x.invalid' ([Errno -2] Name or service not known)",
        ),
        ("first line\nsecond line", "first line"),
    ],
)
def test_reason_is_one_short_line(message: str, reason: str) -> None:
    assert searchclient.reason(ServiceRequestError(message)) == reason
