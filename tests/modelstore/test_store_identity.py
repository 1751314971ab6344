"""How the model store authenticates, against a real Azurite: a connection string's account key or SAS, and the
App Service / Functions managed identity through azure-identity's DefaultAzureCredential.

The managed identity is tested against an Azurite that serves HTTPS and checks bearer tokens (`--oauth basic`);
only the identity endpoint is a stand-in, since nothing real issues App Service tokens here. It follows
"Managed identities for App Service and Azure Functions" (REST endpoint reference) as azure-identity's
ManagedIdentityCredential calls it when IDENTITY_ENDPOINT and IDENTITY_HEADER are set (AppServiceCredential,
through MSAL's ManagedIdentityClient): GET IDENTITY_ENDPOINT?api-version=2019-08-01&resource=...[&client_id=...]
with X-IDENTITY-HEADER: IDENTITY_HEADER, answered with a JSON token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.core.settings import Settings
from shared.modelstore import prefetch
from shared.modelstore.blobstore import BlobModelStore, client_options
from shared.modelstore.errors import StoreError, StoreUnreachable
from shared.modelstore.reads import store_cache_dir
from shared.skill.service import SkillService
from tests.azurite import ACCOUNT, DEV_KEY, Azurite
from tests.modelfactory import as_stored, tiny_bundle

CONTAINER = "models"
TENANT = "0d3a5b1e-7c2f-4e55-9a1d-3f6b2c8e4a70"
SYSTEM_ASSIGNED = "5f2c8e1a-4b7d-4c3e-8a9f-1e6d2b7c3a40"
USER_ASSIGNED = "9a4e7c2b-1d3f-4a6e-b8c5-2f7e1d9a6b30"
NOW = int(time.time())
# Every logger that could see a request: the app's, the SDK's, azure-identity's, MSAL's, the HTTP stack's.
LOGGERS = (None, "azure", "msal", "urllib3", "requests")


def capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return caplog.text + "".join(record.getMessage() for record in caplog.records)


def store_for(settings: Settings) -> BlobModelStore:
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    return store


# -- a connection string's account key or SAS ----------------------------------------------------------------


@pytest.mark.integration
def test_a_sas_connection_string_reads_and_its_token_is_never_shown(
    blob_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    capture_everything(caplog)
    # urllib3 writes each request line, query and so SAS included, at DEBUG; nothing of the app turns that on
    # (the Functions host logs at Information), and at INFO it writes no URL.
    caplog.set_level(logging.INFO, logger="urllib3")
    bundle = tiny_bundle(tmp_path / "tiny")
    keyed = store_for(blob_settings)
    keyed.publish(bundle, version="v1")
    sas = generate_container_sas(
        ACCOUNT,
        blob_settings.blob_container,
        account_key=DEV_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    endpoint = keyed.description.rsplit("/", 1)[0]
    settings = Settings(
        blob_connection_string=f"BlobEndpoint={endpoint};SharedAccessSignature={sas}",
        blob_container=blob_settings.blob_container,
        cache_dir=tmp_path / "sas-cache",
    )
    signature = sas.split("sig=", 1)[1].split("&", 1)[0]
    store = store_for(settings)
    assert store.description == keyed.description  # the container URL without the SAS: cache and health key
    # The cold start's prefetch reads with the SAS; the service serves what it downloaded.
    assert prefetch.start(settings) is True
    service = SkillService(settings)
    assert service.holder.current().version == "v1"
    cached = store_cache_dir(tmp_path / "sas-cache", store.description) / "v1"
    for name in ("model.onnx", "labels.json"):
        assert (cached / name).read_bytes() == as_stored(bundle / name)
    shown = json.dumps(service.holder.status())
    assert '"version": "v1"' in shown and service.holder.status()["lastError"] is None
    # A read-only SAS may not write: the refusal names the container, not the SAS.
    with pytest.raises(StoreError) as refused:
        store.write_json_conditionally("current.json", {"version": "v2"}, None)
    assert str(refused.value) == (
        f"access to model store {store.description} was denied while writing current.json; the identity needs "
        "'Storage Blob Data Contributor' on the container"
    )
    for text in (shown, store.description, repr(refused.value), logged(caplog)):
        assert "sig=" not in text and signature not in text


@pytest.mark.integration
def test_azurite_checks_the_account_key(
    blob_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_for(blob_settings).publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    wrong_key = base64.b64encode(b"not the account key").decode()
    wrong = Settings(
        blob_connection_string=(blob_settings.blob_connection_string or "").replace(DEV_KEY, wrong_key),
        blob_container=blob_settings.blob_container,
        cache_dir=tmp_path / "cache",
    )
    store = store_for(wrong)
    with pytest.raises(StoreError) as refused:
        store.read_pointer()
    assert str(refused.value) == (
        f"access to model store {store.description} was denied while reading current.json; the identity needs "
        "'Storage Blob Data Contributor' on the container"
    )
    assert not isinstance(refused.value, StoreUnreachable)  # refused, not an outage
    assert wrong_key not in repr(refused.value) and DEV_KEY not in repr(refused.value)
    # The prefetch is refused the same way and leaves nothing for the service, with one debug line: the
    # service's own fetch reports the refusal.
    capture_everything(caplog)
    assert prefetch.start(wrong) is True
    assert prefetch.take(wrong) is None
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == prefetch.__name__]
    assert said == [(logging.DEBUG, f"model prefetch failed ({refused.value})")]
    assert DEV_KEY not in logged(caplog) and wrong_key not in logged(caplog)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("manifest.json"))


@pytest.mark.parametrize(
    "text",
    [
        "not a connection string",
        "AccountKey=a2V5",
        "BlobSecondaryEndpoint=https://acct-secondary.blob.core.windows.net;AccountName=acct;AccountKey=a2V5",
    ],
)
def test_a_connection_string_the_sdk_refuses_is_one_line(text: str) -> None:
    settings = Settings.from_env({"MODEL_BLOB_CONNECTION_STRING": text})  # no endpoint to check: the SDK says why
    with pytest.raises(StoreError) as refused:
        BlobModelStore.from_settings(settings)
    assert str(refused.value) == "MODEL_BLOB_CONNECTION_STRING is not a valid storage connection string"
    assert "a2V5" not in repr(refused.value)


def test_an_account_url_the_sdk_refuses_is_one_line() -> None:
    # Settings.from_env refuses http first; this is what a Settings built by hand meets.
    with pytest.raises(StoreError) as refused:
        BlobModelStore.from_settings(Settings(blob_account_url="http://example.com/acct"))
    assert str(refused.value) == (
        "MODEL_BLOB_ACCOUNT_URL cannot be used (Token credential is only supported with HTTPS.); expected "
        "https://<account>.blob.core.windows.net"
    )


def test_a_credential_setting_azure_identity_refuses_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "bogus")
    with pytest.raises(StoreError) as refused:
        BlobModelStore.from_settings(Settings(blob_account_url="https://acct.blob.core.windows.net"))
    message = str(refused.value)
    assert message.startswith(
        "no usable credential for MODEL_BLOB_ACCOUNT_URL: Invalid value for AZURE_TOKEN_CREDENTIALS: bogus. "
        "Valid values are: dev, prod, "
    )
    assert "\n" not in message and "managedidentitycredential" in message


# -- the managed identity ------------------------------------------------------------------------------------


def jwt(claims: dict[str, object]) -> str:
    """An HS256 JWT. Azurite's basic check reads the claims and skips the signature, so any key does."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signed = f"{part(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{part(json.dumps(claims).encode())}"
    return f"{signed}.{part(hmac.new(b'stand-in', signed.encode(), hashlib.sha256).digest())}"


class IdentityEndpoint(HTTPServer):
    """The identity endpoint on a loopback port. `asked` records each request's query and X-IDENTITY-HEADER,
    `issued` each token; `overrides` are merged into the next tokens' claims (to hand out a bad one)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), IdentityHandler)
        self.secret = secrets.token_urlsafe(24)
        self.asked: list[tuple[dict[str, list[str]], str | None]] = []
        self.issued: list[str] = []
        self.overrides: dict[str, object] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/msi/token"


class IdentityHandler(BaseHTTPRequestHandler):
    server: IdentityEndpoint

    def do_GET(self) -> None:
        endpoint, parts = self.server, urlsplit(self.path)
        query, header = parse_qs(parts.query), self.headers.get("X-IDENTITY-HEADER")
        endpoint.asked.append((query, header))
        if header != endpoint.secret:
            return self.answer(401, {"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong"})
        if parts.path != "/msi/token" or query.get("api-version") != ["2019-08-01"] or "resource" not in query:
            return self.answer(400, {"statusCode": 400, "message": "api-version 2019-08-01 and resource required"})
        resource, client_id = query["resource"][0], query.get("client_id", [SYSTEM_ASSIGNED])[0]
        now = int(time.time())
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{TENANT}/",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "appid": client_id,
            "oid": client_id,
            "sub": client_id,
            "tid": TENANT,
        }
        token = jwt(claims | endpoint.overrides)
        endpoint.issued.append(token)
        body = {"access_token": token, "expires_on": str(now + 3600), "resource": resource, "token_type": "Bearer"}
        return self.answer(200, body | {"client_id": client_id})

    def answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # http.server writes every request to stderr


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Azurite, Path]]:
    """An HTTPS, token-checking Azurite holding version v1 (published with the SDK and the account key)."""
    from azure.storage.blob import ContainerClient

    server = Azurite(oauth=True).start()
    try:
        bundle = tiny_bundle(tmp_path_factory.mktemp("published") / "tiny")
        container = ContainerClient.from_connection_string(
            server.connection_string, CONTAINER, connection_verify=str(server.cert_path), **client_options()
        )
        BlobModelStore(container).publish(bundle, version="v1")
        yield server, bundle
    finally:
        server.close()


@pytest.fixture
def identity() -> Iterator[IdentityEndpoint]:
    endpoint = IdentityEndpoint()
    threading.Thread(target=endpoint.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield endpoint
    endpoint.shutdown()
    endpoint.server_close()


def app_service(
    server: Azurite,
    endpoint: IdentityEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    client_id: str | None = None,
    secret: str | None = None,
) -> Settings:
    """The environment of an App Service / Functions app with a managed identity, and its settings."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    # No developer sign-in (az, azd, VS Code, the shared token cache) for the credential chain to fall back on.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # azure-core's RequestsTransport leaves `requests` to trust the environment (Session.trust_env), and
    # requests then verifies https against REQUESTS_CA_BUNDLE: here, Azurite's self-signed certificate.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert_path))
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_path))
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", secret or endpoint.secret)
    return Settings.from_env(
        {
            "MODEL_BLOB_ACCOUNT_URL": server.account_url,
            "MODEL_BLOB_CONTAINER": CONTAINER,
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            **({"AZURE_CLIENT_ID": client_id} if client_id else {}),
        }
    )


def asked_for(client_id: str | None) -> dict[str, list[str]]:
    query = {"api-version": ["2019-08-01"], "resource": ["https://storage.azure.com"]}
    return query | ({"client_id": [client_id]} if client_id else {})


@pytest.mark.parametrize("client_id", [None, USER_ASSIGNED], ids=["system-assigned", "user-assigned"])
@pytest.mark.integration
def test_the_managed_identity_downloads_the_current_version(
    published: tuple[Azurite, Path],
    identity: IdentityEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    client_id: str | None,
) -> None:
    server, bundle = published
    capture_everything(caplog)
    settings = app_service(server, identity, monkeypatch, tmp_path, client_id=client_id)
    assert prefetch.start(settings) is True
    found = prefetch.take(settings)
    assert found is not None and found.pointer.version == "v1"
    assert found.description == f"{server.account_url}/{CONTAINER}"
    assert found.path == store_cache_dir(tmp_path / "cache", found.description) / "v1"
    for name in ("model.onnx", "labels.json"):
        assert (found.path / name).read_bytes() == as_stored(bundle / name)
    # One token for the pointer, the manifest and every file, asked for the storage resource and the identity.
    assert identity.asked == [(asked_for(client_id), identity.secret)]
    [token] = identity.issued
    text = logged(caplog)
    assert "downloading version v1" in text
    assert token not in text and identity.secret not in text


@pytest.mark.integration
@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "https://vault.azure.net"},
        {"aud": "https://otheraccount.blob.core.windows.net"},
        {"iss": "https://login.example.com/tenant/"},
        {"exp": NOW - 60},
        {"nbf": NOW + 86400},
    ],
    ids=["another-resource", "another-account", "not-entra", "expired", "not-yet-valid"],
)
def test_azurite_refuses_a_token_it_should_not_accept(
    published: tuple[Azurite, Path],
    identity: IdentityEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    claims: dict[str, object],
) -> None:
    """The token the test above downloads with, one claim changed: Azurite's check is real."""
    server, _ = published
    capture_everything(caplog)
    identity.overrides = claims
    store = store_for(app_service(server, identity, monkeypatch, tmp_path))
    with pytest.raises(StoreError) as refused:
        store.read_pointer()
    # Azurite answers 403 AuthenticationFailed, which azure-storage-blob raises as ClientAuthenticationError.
    assert str(refused.value) == (
        f"credentials for model store {server.account_url}/{CONTAINER} are missing or were refused while reading "
        "current.json (Server failed to authenticate the request. Make sure the value of the Authorization header "
        "is formed correctly including the signature.); in Azure give the app's managed identity 'Storage Blob "
        "Data Contributor', locally sign in with `az login` or set MODEL_BLOB_CONNECTION_STRING"
    )
    assert not isinstance(refused.value, StoreUnreachable)
    [token] = identity.issued
    shown = repr(refused.value) + logged(caplog)
    assert token not in shown and identity.secret not in shown


@pytest.mark.integration
def test_a_wrong_identity_header_is_refused_and_never_shown(
    published: tuple[Azurite, Path],
    identity: IdentityEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    server, _ = published
    capture_everything(caplog)
    stale = secrets.token_urlsafe(24)
    store = store_for(app_service(server, identity, monkeypatch, tmp_path, secret=stale))
    with pytest.raises(StoreError) as refused:
        store.read_pointer()
    assert str(refused.value) == (
        f"no credential for model store {server.account_url}/{CONTAINER}: in Azure enable the app's managed "
        "identity (AZURE_CLIENT_ID for a user-assigned one), locally `az login`, or set MODEL_BLOB_CONNECTION_STRING"
    )
    assert not isinstance(refused.value, StoreUnreachable)  # refused, not an outage
    assert identity.asked and all(asked == (asked_for(None), stale) for asked in identity.asked)
    assert identity.issued == []
    shown = repr(refused.value) + logged(caplog)
    assert stale not in shown and identity.secret not in shown
