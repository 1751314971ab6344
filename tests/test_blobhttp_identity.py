"""The cold start's Blob reader with the App Service / Functions managed identity (shared/blobhttp.py), against
a real Azurite that serves HTTPS and checks bearer tokens (`--oauth basic`); only the identity endpoint is a
stand-in, since nothing real issues App Service tokens here.

The stand-in follows "Managed identities for App Service and Azure Functions" (REST endpoint reference) as
azure-identity's AppServiceCredential (through MSAL) calls it: GET IDENTITY_ENDPOINT?api-version=2019-08-01
&resource=...[&client_id=...] with X-IDENTITY-HEADER: IDENTITY_HEADER, answered with a JSON token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.core.settings import Settings
from shared.modelstore.blobhttp import BlobReadError, BlobUnreachable, HttpBlobReader
from shared.modelstore.blobstore import BlobModelStore, client_options
from shared.modelstore.reads import download_version, read_current
from tests.azurite import Azurite
from tests.modelfactory import tiny_bundle

CONTAINER = "models"
TENANT = "0d3a5b1e-7c2f-4e55-9a1d-3f6b2c8e4a70"
SYSTEM_ASSIGNED = "5f2c8e1a-4b7d-4c3e-8a9f-1e6d2b7c3a40"
USER_ASSIGNED = "9a4e7c2b-1d3f-4a6e-b8c5-2f7e1d9a6b30"
NOW = int(time.time())


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


def identity_reader(
    server: Azurite,
    endpoint: IdentityEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    client_id: str | None = None,
    secret: str | None = None,
) -> HttpBlobReader:
    # The reader's ssl.create_default_context() reads SSL_CERT_FILE on each call: it trusts Azurite's cert.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_path))
    settings = Settings(
        blob_account_url=server.account_url,
        blob_container=CONTAINER,
        cache_dir=tmp_path / "cache",
        azure_client_id=client_id,
    )
    environ = {"IDENTITY_ENDPOINT": endpoint.url, "IDENTITY_HEADER": secret or endpoint.secret}
    reader = HttpBlobReader.from_settings(settings, environ)
    assert reader is not None
    return reader


def asked_for(client_id: str | None) -> dict[str, list[str]]:
    query = {"api-version": ["2019-08-01"], "resource": ["https://storage.azure.com"]}
    return query | ({"client_id": [client_id]} if client_id else {})


@pytest.mark.parametrize("client_id", [None, USER_ASSIGNED], ids=["system-assigned", "user-assigned"])
def test_the_managed_identity_downloads_the_current_version(
    published: tuple[Azurite, Path],
    identity: IdentityEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    client_id: str | None,
) -> None:
    server, bundle = published
    caplog.set_level(logging.DEBUG)
    reader = identity_reader(server, identity, monkeypatch, tmp_path, client_id=client_id)
    pointer = read_current(reader)
    assert pointer is not None and pointer.version == "v1"
    path = download_version(reader, pointer.version, tmp_path / "cache", pointer.manifest_sha256)
    reader.close()
    for name in ("model.onnx", "labels.json"):
        assert (path / name).read_bytes() == (bundle / name).read_bytes()
    # One token for the pointer, the manifest and every file.
    assert identity.asked == [(asked_for(client_id), identity.secret)]
    [token] = identity.issued
    logged = caplog.text + "".join(record.getMessage() for record in caplog.records)
    assert "downloading version v1" in logged
    assert token not in logged and identity.secret not in logged


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
    caplog.set_level(logging.DEBUG)
    identity.overrides = claims
    reader = identity_reader(server, identity, monkeypatch, tmp_path)
    with pytest.raises(BlobReadError) as raised:
        read_current(reader)
    reader.close()
    assert str(raised.value) == f"model store {server.account_url}/{CONTAINER} answered 403 while reading current.json"
    [token] = identity.issued
    assert token not in repr(raised.value) + caplog.text


def test_a_wrong_identity_header_is_refused_and_never_shown(
    published: tuple[Azurite, Path],
    identity: IdentityEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    server, _ = published
    caplog.set_level(logging.DEBUG)
    stale = secrets.token_urlsafe(24)
    reader = identity_reader(server, identity, monkeypatch, tmp_path, secret=stale)
    with pytest.raises(BlobReadError) as raised:
        read_current(reader)
    reader.close()
    assert str(raised.value) == "the managed identity endpoint answered 401 while reading current.json"
    assert not isinstance(raised.value, BlobUnreachable)  # refused, not an outage
    assert identity.asked == [(asked_for(None), stale)] and identity.issued == []
    shown = repr(raised.value) + caplog.text
    assert stale not in shown and identity.secret not in shown
