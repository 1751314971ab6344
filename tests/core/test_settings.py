from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared import cli
from shared.core.errors import SettingsError
from shared.core.settings import Settings, setting_names
from tests.azurite import DEV_KEY
from tests.conftest import ROOT


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.deadline_s, s.max_request_bytes, s.max_records, s.default_top_k) == (200.0, 100 * 1024 * 1024, 1000, 5)
    assert s.model_dir is None and s.api_key is None and s.fast_jpeg_decode is True


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "AZUREML_MODEL_DIR": "/models/x",
            "ENGINE_THREADS": "2",
            "DECODE_THREADS": "1",
            "FAST_JPEG_DECODE": "false",
            "SKILL_DEADLINE_SECONDS": "120.5",
            "SKILL_API_KEY": "key-value-xyz",
        }
    )
    assert (s.model_dir, s.engine_threads, s.decode_threads, s.fast_jpeg_decode) == (Path("/models/x"), 2, 1, False)
    assert s.deadline_s == 120.5 and s.api_key == "key-value-xyz"
    assert "key-value-xyz" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SKILL_DEADLINE_SECONDS": "300"},
            "setting SKILL_DEADLINE_SECONDS='300' is invalid: expected seconds from 1 to 230",
        ),
        ({"FAST_JPEG_DECODE": "maybe"}, "setting FAST_JPEG_DECODE='maybe' is invalid: expected true or false"),
        ({"SKILL_MAX_RECORDS": "0"}, "setting SKILL_MAX_RECORDS='0' is invalid: expected an integer from 1 to 100000"),
        (
            {"SKILL_MIN_IMAGE_SIDE": "-1"},
            "setting SKILL_MIN_IMAGE_SIDE='-1' is invalid: expected pixels from 1 to 4096",
        ),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


def test_every_setting_is_in_the_sample_and_the_readme() -> None:
    names = setting_names()
    assert len(names) >= 12
    sample = json.loads((ROOT / "local.settings.json.sample").read_text())["Values"]
    readme = (ROOT / "docs" / "settings.md").read_text()
    from shared.core.settings import LEGACY_ALIASES

    assert names - set(sample) - set(LEGACY_ALIASES) == set()
    assert {n for n in names if f"| `{n}` |" not in readme} == set()


# -- re-enrichment (shared/search/reindex.py) ----------------------------------------------------------------------


def test_reindex_defaults_follow_the_endpoint_and_the_poll_period() -> None:
    off = Settings.from_env({"MODEL_POLL_SECONDS": "30"})
    assert (off.search_endpoint, off.reindex_mode, off.reindex_delay_s) == (None, "off", 120.0)
    on = Settings.from_env({"SEARCH_ENDPOINT": "https://srch.search.windows.net/", "SEARCH_ADMIN_KEY": "admin-key-x"})
    assert on.search_endpoint == "https://srch.search.windows.net"
    assert (on.reindex_mode, on.reindex_delay_s) == ("full", 180.0)
    assert (on.search_indexer_name, on.search_skillset_name, on.search_skill_name, on.search_index_name) == (
        "automl-images-indexer",
        "automl-images-skillset",
        "classify-images",
        "automl-images-index",
    )
    assert "admin-key-x" not in repr(on)
    local = Settings.from_env({"SEARCH_ENDPOINT": "http://127.0.0.1:8080", "REINDEX_MODE": "Skills"})
    assert (local.search_endpoint, local.reindex_mode) == ("http://127.0.0.1:8080", "skills")


ENDPOINT_EXPECTED = (
    "expected the search service's URL, https://<service>.search.windows.net (plain http only to a loopback address)"
)
SEARCH_NAME_EXPECTED = (
    "expected lowercase letters, digits and dashes (1-128, starting and ending with a letter or digit)"
)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SEARCH_ENDPOINT": "http://srch.search.windows.net"},
            f"setting SEARCH_ENDPOINT='http://srch.search.windows.net' is invalid: {ENDPOINT_EXPECTED}",
        ),
        (
            {"SEARCH_ENDPOINT": "https://srch.search.windows.net/indexes?x=1"},
            f"setting SEARCH_ENDPOINT='https://srch.search.windows.net/indexes?x=1' is invalid: {ENDPOINT_EXPECTED}",
        ),
        (
            {"REINDEX_MODE": "skills"},
            "setting REINDEX_MODE=skills needs SEARCH_ENDPOINT: set it to the search service's URL, or set "
            "REINDEX_MODE=off",
        ),
        (
            {"SEARCH_ENDPOINT": "https://s.search.windows.net", "REINDEX_MODE": "partial"},
            "setting REINDEX_MODE='partial' is invalid: expected off, full or skills",
        ),
        (
            {"REINDEX_DELAY_SECONDS": "-1"},
            "setting REINDEX_DELAY_SECONDS='-1' is invalid: expected seconds from 0 to 604800",
        ),
        (
            {"SEARCH_INDEXER_NAME": "My_Indexer"},
            f"setting SEARCH_INDEXER_NAME='My_Indexer' is invalid: {SEARCH_NAME_EXPECTED}",
        ),
        (
            {"SEARCH_SKILL_NAME": "x" * 129},
            f"setting SEARCH_SKILL_NAME='{'x' * 129}' is invalid: expected a skill name of 1-128 printable characters",
        ),
    ],
)
def test_bad_reindex_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


# -- the model store's endpoints: https, or plain http only to a loopback address ------------------------------

ACCOUNT_URL_NEEDS_HTTPS = (
    "setting MODEL_BLOB_ACCOUNT_URL needs https: {} would carry DefaultAzureCredential's token in clear text; "
    "reach Azurite with MODEL_BLOB_CONNECTION_STRING"
)
CONNECTION_STRING_NEEDS_HTTPS = (
    "setting MODEL_BLOB_CONNECTION_STRING needs https: its blob endpoint is {}, and plain http is allowed only to "
    "a loopback address (Azurite)"
)
KEY = f"AccountName=acct;AccountKey={DEV_KEY}"
SAS = "SharedAccessSignature=sv=2025-11-05&sr=c&sp=rl&sig=c2VjcmV0LXNhcy1zaWduYXR1cmU%3D"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODEL_BLOB_ACCOUNT_URL": "http://example.com/acct"}, ACCOUNT_URL_NEEDS_HTTPS.format("http://example.com")),
        # azure-storage-blob refuses a token over http whatever the host: Azurite is reached with a key.
        (
            {"MODEL_BLOB_ACCOUNT_URL": "http://127.0.0.1:10000/devstoreaccount1"},
            ACCOUNT_URL_NEEDS_HTTPS.format("http://127.0.0.1"),
        ),
        (
            {"MODEL_BLOB_ACCOUNT_URL": "HTTP://user:pass@acct.blob.core.windows.net/?sv=1&sig=c2Vj"},
            ACCOUNT_URL_NEEDS_HTTPS.format("http://acct.blob.core.windows.net"),
        ),
        (
            {"MODEL_BLOB_ACCOUNT_URL": "acct.blob.core.windows.net"},
            "setting MODEL_BLOB_ACCOUNT_URL is invalid: expected https://<account>.blob.core.windows.net",
        ),
        (
            {"MODEL_BLOB_ACCOUNT_URL": "ftp://acct.blob.core.windows.net"},
            "setting MODEL_BLOB_ACCOUNT_URL is invalid: expected https://<account>.blob.core.windows.net",
        ),
        (
            {"MODEL_BLOB_CONNECTION_STRING": f"{KEY};BlobEndpoint=http://example.com/acct"},
            CONNECTION_STRING_NEEDS_HTTPS.format("http://example.com"),
        ),
        (
            {"MODEL_BLOB_CONNECTION_STRING": f"BlobEndpoint=http://acct.blob.core.windows.net/;{SAS}"},
            CONNECTION_STRING_NEEDS_HTTPS.format("http://acct.blob.core.windows.net"),
        ),
        (
            {"MODEL_BLOB_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;{KEY};EndpointSuffix=core.windows.net"},
            CONNECTION_STRING_NEEDS_HTTPS.format("http://acct.blob.core.windows.net"),
        ),
        # Keys are case-insensitive, as the SDK reads them; the protocol is compared case-insensitively too.
        (
            {"MODEL_BLOB_CONNECTION_STRING": f"defaultendpointsprotocol=HTTP;{KEY};endpointsuffix=example.org"},
            CONNECTION_STRING_NEEDS_HTTPS.format("http://acct.blob.example.org"),
        ),
        # BlobEndpoint wins over the protocol, as in the SDK.
        (
            {
                "MODEL_BLOB_CONNECTION_STRING": (
                    f"DefaultEndpointsProtocol=https;{KEY};EndpointSuffix=core.windows.net;"
                    "BlobEndpoint=http://10.0.0.4:10000/acct"
                )
            },
            CONNECTION_STRING_NEEDS_HTTPS.format("http://10.0.0.4"),
        ),
        (
            {"MODEL_BLOB_CONNECTION_STRING": f"{KEY};BlobEndpoint=http://[2001:db8::1]:10000/acct"},
            CONNECTION_STRING_NEEDS_HTTPS.format("http://[2001:db8::1]"),
        ),
        (
            {"MODEL_BLOB_CONNECTION_STRING": f"{KEY};BlobEndpoint=http://127.0.0.1@example.com/acct"},
            CONNECTION_STRING_NEEDS_HTTPS.format("http://example.com"),
        ),
    ],
    ids=[
        "account-url-http",
        "account-url-http-loopback",
        "account-url-http-with-sas",
        "account-url-no-scheme",
        "account-url-ftp",
        "key-blob-endpoint-http",
        "sas-blob-endpoint-http",
        "key-protocol-http",
        "lowercase-keys-protocol-HTTP",
        "blob-endpoint-over-protocol",
        "ipv6-not-loopback",
        "user-info-not-the-host",
    ],
)
def test_a_store_endpoint_without_https_is_refused_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message
    for secret in (DEV_KEY, "AccountKey", "SharedAccessSignature", "sig=", "c2Vj", "user:pass"):
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "account_url"),
    [
        ({"MODEL_BLOB_ACCOUNT_URL": "https://acct.blob.core.windows.net/"}, "https://acct.blob.core.windows.net"),
        ({"MODEL_BLOB_ACCOUNT_URL": "https://127.0.0.1:10000/devstoreaccount1"}, "https://127.0.0.1:10000/devstoreaccount1"),
        ({"MODEL_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true"}, None),
        ({"MODEL_BLOB_CONNECTION_STRING": f"{KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1"}, None),
        ({"MODEL_BLOB_CONNECTION_STRING": f"{KEY};BlobEndpoint=http://localhost:10000/devstoreaccount1"}, None),
        ({"MODEL_BLOB_CONNECTION_STRING": f"BlobEndpoint=http://[::1]:10000/devstoreaccount1;{SAS}"}, None),
        ({"MODEL_BLOB_CONNECTION_STRING": f"DefaultEndpointsProtocol=https;{KEY};EndpointSuffix=core.net"}, None),
        # Without BlobEndpoint or EndpointSuffix the SDK uses https on core.windows.net, whatever the protocol.
        ({"MODEL_BLOB_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;{KEY}"}, None),
        ({"MODEL_BLOB_CONNECTION_STRING": f"BlobEndpoint=https://acct.blob.core.windows.net/;{SAS}"}, None),
        # Without a scheme the SDK's ContainerClient uses https.
        ({"MODEL_BLOB_CONNECTION_STRING": f"{KEY};BlobEndpoint=acct.blob.core.windows.net"}, None),
    ],
)  # fmt: skip
def test_https_and_loopback_http_store_endpoints_are_accepted(env: dict[str, str], account_url: str | None) -> None:
    settings = Settings.from_env(env)
    assert settings.blob_account_url == account_url
    assert settings.blob_connection_string == env.get("MODEL_BLOB_CONNECTION_STRING")
    assert settings.uses_blob_store


def test_the_cli_refuses_an_http_account_url_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith(("MODEL_", "AZURE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MODEL_BLOB_ACCOUNT_URL", "http://example.com/acct")
    assert cli.main(["versions"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: {ACCOUNT_URL_NEEDS_HTTPS.format('http://example.com')}\n"


@pytest.mark.parametrize(
    "text",
    [
        "UseDevelopmentStorage=true",
        f"{KEY};BlobEndpoint=http://example.com/acct",
        f"{KEY};BlobEndpoint=acct.blob.core.windows.net",
        f"{KEY};BlobEndpoint=http://127.0.0.1@example.com/acct",
        f"DefaultEndpointsProtocol=http;{KEY};EndpointSuffix=core.windows.net",
        f"defaultendpointsprotocol=HTTP;{KEY};endpointsuffix=example.org",
        f"DefaultEndpointsProtocol=http;{KEY}",
        f"DefaultEndpointsProtocol=https;{KEY};EndpointSuffix=core.windows.net;BlobEndpoint=http://10.0.0.4:10000/acct",
        f"{KEY};BlobEndpoint=;EndpointSuffix=example.org",
        f"BlobEndpoint=http://[::1]:10000/devstoreaccount1;{SAS}",
    ],
)
def test_the_endpoint_checked_is_the_one_the_storage_sdk_uses(text: str) -> None:
    from urllib.parse import urlsplit

    from azure.storage.blob import ContainerClient

    from shared.core.settings import connection_string_blob_url, storage_connection_string

    ours = connection_string_blob_url(text)
    assert ours is not None
    sdk = urlsplit(ContainerClient.from_connection_string(storage_connection_string(text), "models").url)
    assert (urlsplit(ours).scheme.lower(), urlsplit(ours).hostname) == (sdk.scheme.lower(), sdk.hostname)


@pytest.mark.parametrize(
    "text", ["UseDevelopmentStorage=true", "UseDevelopmentStorage=true;", "usedevelopmentstorage=true"]
)
def test_the_development_storage_shortcut_is_spelled_out_for_every_storage_sdk(text: str) -> None:
    """azure-storage-blob before 12.28 (the newest azureml-mlflow allows) refuses the shortcut; the store must
    not depend on which release is installed."""
    from azure.storage.blob import ContainerClient

    from shared.core.settings import DEVELOPMENT_STORAGE_BLOB_URL, storage_connection_string

    expanded = storage_connection_string(text)
    assert "AccountName=devstoreaccount1" in expanded and f"BlobEndpoint={DEVELOPMENT_STORAGE_BLOB_URL};" in expanded
    client = ContainerClient.from_connection_string(expanded, "models")
    assert client.url == f"{DEVELOPMENT_STORAGE_BLOB_URL}/models"


def test_other_connection_strings_are_left_as_they_are() -> None:
    from shared.core.settings import storage_connection_string

    text = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    assert storage_connection_string(text) == text
    for other in ("UseDevelopmentStorage=false", "UseDevelopmentStorage=TRUE"):  # as connection_string_blob_url
        assert storage_connection_string(other) == other
