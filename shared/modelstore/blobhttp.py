"""Read blobs over plain HTTP(S), for the cold start's prefetch, without importing the Azure Storage SDK.

Importing `azure.storage.blob` (azure-core, requests, urllib3, the generated models) takes 135-165 ms of one
core on the development machine, half of what a bare ONNX Runtime script needs to classify its first image
(docs/performance.md). The prefetch (shared/prefetch.py) only has to read `current.json`, one manifest and
a few files, so it reads them with `http.client` on a background thread while the process imports
ONNX Runtime; the service builds the SDK's client later, for its first poll.

Only what a cold start in Azure or against Azurite uses is handled here, the way the SDK does it:

- a connection string with `AccountName` and `AccountKey` (Shared Key, signed as the SDK's
  SharedKeyCredentialPolicy signs a GET), with `SharedAccessSignature` (the SAS as the query), or
  `UseDevelopmentStorage=true`;
- `MODEL_BLOB_ACCOUNT_URL` with the App Service / Functions managed identity (`IDENTITY_ENDPOINT` and
  `IDENTITY_HEADER`, the identity endpoint's 2019-08-01 protocol that azure-identity's
  ManagedIdentityCredential uses there; AZURE_CLIENT_ID picks a user-assigned identity).

Anything else (a proxy in the environment, a service principal or workload identity in the environment, an
`az login` on a laptop, a string the parser does not know) returns None from `from_settings`, and the
prefetch uses the SDK as before. What is read is verified the same way whichever reader read it: the
manifest against the pointer's sha256, every file against the manifest (shared.modelstore.blobstore.download_version).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
from collections.abc import Iterator, Mapping
from email.utils import formatdate
from urllib.parse import quote, urlencode, urlsplit

from shared.core.settings import Settings
from shared.modelstore.errors import SourceUnreachable

# A GA version of the Blob REST API that Azure and Azurite 3.37 both accept; Bearer tokens need 2017-11-09+.
API_VERSION = "2025-11-05"
STORAGE_RESOURCE = "https://storage.azure.com"
IDENTITY_API_VERSION = "2019-08-01"
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
CHUNK_BYTES = 4 << 20
# The emulator's published development account (the same one the SDK uses for UseDevelopmentStorage=true).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_ENDPOINT = f"http://127.0.0.1:10000/{DEV_ACCOUNT}"
# Settings that make the SDK or azure-identity behave differently from this reader: a proxy (requests
# honours them), or a credential DefaultAzureCredential would try before the managed identity.
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
CREDENTIAL_VARIABLES = (
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TOKEN_CREDENTIALS",
    "IDENTITY_SERVER_THUMBPRINT",
)


class BlobReadError(Exception):
    """The store refused a read; the prefetch gives up and the service's own fetch reports why."""


class BlobUnreachable(BlobReadError, SourceUnreachable):
    """No answer from the store or the identity endpoint."""


def container_url(account_url: str, container: str) -> str:
    """The container's URL as the SDK's ContainerClient forms it (without any SAS)."""
    return f"{account_url.rstrip('/')}/{quote(container)}"


def parse_connection_string(text: str) -> tuple[str, str | None, bytes | None, str | None] | None:
    """(account URL, account name, account key, SAS) from a storage connection string, following the SDK's
    parse_connection_str for the blob service: keys are case-insensitive, an account key wins over a SAS,
    `BlobEndpoint` over protocol, account and suffix. None when the string is not one this reader handles."""
    pairs = [item.split("=", 1) for item in text.rstrip(";").split(";")]
    if any(len(pair) != 2 for pair in pairs):
        return None
    values = {key.strip().upper(): value for key, value in pairs}
    if values.get("USEDEVELOPMENTSTORAGE") == "true":
        return DEV_ENDPOINT, DEV_ACCOUNT, base64.b64decode(DEV_KEY), None
    account = values.get("ACCOUNTNAME")
    if "BLOBENDPOINT" in values:
        url = values["BLOBENDPOINT"]
    elif account and "DEFAULTENDPOINTSPROTOCOL" in values and "ENDPOINTSUFFIX" in values:
        url = f"{values['DEFAULTENDPOINTSPROTOCOL']}://{account}.blob.{values['ENDPOINTSUFFIX']}"
    elif account:
        url = f"https://{account}.blob.{values.get('ENDPOINTSUFFIX', 'core.windows.net')}"
    else:
        return None
    if account and values.get("ACCOUNTKEY"):
        try:
            return url, account, base64.b64decode(values["ACCOUNTKEY"], validate=True), None
        except ValueError:
            return None
    if values.get("SHAREDACCESSSIGNATURE"):
        return url, None, None, values["SHAREDACCESSSIGNATURE"].lstrip("?")
    return None


def _plain(account_url: str) -> bool:
    """An http(s) account URL without a query or fragment (a SAS in the URL is the SDK's to take apart)."""
    parts = urlsplit(account_url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment


class HttpBlobReader:
    """Reads one container's blobs with GETs on one kept-alive connection (shared.modelstore.blobstore.BlobReads)."""

    def __init__(
        self,
        account_url: str,
        container: str,
        *,
        account: str | None = None,
        key: bytes | None = None,
        sas: str | None = None,
        token: str | None = None,
        identity: tuple[str, str, str | None] | None = None,
    ) -> None:
        self.description = container_url(account_url, container)
        parts = urlsplit(self.description)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path
        self._account, self._key, self._sas, self._token = account, key, sas, token
        self._identity = identity  # (endpoint, header secret, client id) to ask for a token on first use
        self._connection: http.client.HTTPConnection | None = None

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> HttpBlobReader | None:
        """The reader for the configured store, or None when the SDK must be used (see the module text)."""
        env = os.environ if environ is None else environ
        if any(env.get(name) or env.get(name.lower()) for name in PROXY_VARIABLES):
            return None
        if settings.blob_connection_string:
            parsed = parse_connection_string(settings.blob_connection_string)
            if parsed is None or not _plain(parsed[0]):
                return None
            url, account, key, sas = parsed
            return cls(url, settings.blob_container, account=account, key=key, sas=sas)
        endpoint, secret = env.get("IDENTITY_ENDPOINT"), env.get("IDENTITY_HEADER")
        if not (settings.blob_account_url and _plain(settings.blob_account_url) and endpoint and secret):
            return None
        if any(env.get(name) for name in CREDENTIAL_VARIABLES):
            return None
        identity = (endpoint, secret, settings.azure_client_id)
        return cls(settings.blob_account_url, settings.blob_container, identity=identity)

    # -- shared.modelstore.blobstore.BlobReads ----------------------------------------------------------------------

    def read_blob(self, name: str, action: str) -> tuple[bytes, str | None] | None:
        response = self._get(name, action)
        if response is None:
            return None
        with response:
            return self._read(response, action), response.getheader("ETag")

    def blob_chunks(self, name: str, action: str) -> Iterator[bytes]:
        response = self._get(name, action)
        if response is None:
            raise BlobReadError(f"{name} is not in {self.description} while {action}")
        with response:
            while chunk := self._read(response, action, CHUNK_BYTES):
                yield chunk

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- HTTP ----------------------------------------------------------------------------------------

    def _get(self, name: str, action: str) -> http.client.HTTPResponse | None:
        """The response to GET `name` when it is 200, None for 404 (no such blob or container)."""
        path = f"{self._path}/{quote(name, safe='~/')}"
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": API_VERSION}
        if self._key is not None and self._account is not None:
            headers["Authorization"] = shared_key(self._account, self._key, "GET", path, headers)
        elif self._sas is not None:
            path = f"{path}?{self._sas}"
        else:
            headers["Authorization"] = f"Bearer {self._bearer_token(action)}"
        try:
            connection = self._connect()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise BlobUnreachable(f"model store {self.description} is unreachable while {action} ({exc})") from None
        if response.status == 200:
            return response
        response.read()
        response.close()
        if response.status == 404:
            return None
        raise BlobReadError(f"model store {self.description} answered {response.status} while {action}")

    def _read(self, response: http.client.HTTPResponse, action: str, amount: int | None = None) -> bytes:
        try:
            return response.read(amount)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise BlobUnreachable(f"model store {self.description} stopped answering while {action} ({exc})") from None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            connection = open_connection(self._https, self._host, self._port)
            connection.connect()
            if connection.sock is not None:
                connection.sock.settimeout(READ_TIMEOUT_S)  # 5 s to connect, 60 s for each read, as the store
            self._connection = connection
        return self._connection

    def _bearer_token(self, action: str) -> str:
        if self._token is None:
            assert self._identity is not None
            self._token = app_service_token(*self._identity, action=action)
        return self._token


def open_connection(https: bool, host: str, port: int | None) -> http.client.HTTPConnection:
    """A connection with the connect timeout; https verifies the server against the system's CAs."""
    if not https:
        return http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
    import ssl  # only for https: a local Azurite is plain http

    return http.client.HTTPSConnection(host, port, timeout=CONNECT_TIMEOUT_S, context=ssl.create_default_context())


def shared_key(account: str, key: bytes, method: str, path: str, headers: Mapping[str, str]) -> str:
    """The Authorization header of a Shared Key request without a body, query or standard headers: the
    verb, eleven empty standard headers, the x-ms- headers sorted, then `/account/path` ("Authorize with
    Shared Key", Blob service 2009-09-19 and later; the SDK's SharedKeyCredentialPolicy)."""
    signed = sorted((name.lower(), value) for name, value in headers.items() if name.lower().startswith("x-ms-"))
    canonical = "".join(f"{name}:{value}\n" for name, value in signed)
    string_to_sign = f"{method}\n" + "\n" * 11 + canonical + f"/{account}{path}"
    signature = base64.b64encode(hmac.new(key, string_to_sign.encode(), hashlib.sha256).digest()).decode()
    return f"SharedKey {account}:{signature}"


def app_service_token(endpoint: str, secret: str, client_id: str | None, *, action: str) -> str:
    """A storage token from the App Service / Functions identity endpoint: GET IDENTITY_ENDPOINT with
    `api-version=2019-08-01`, `resource` and, for a user-assigned identity, `client_id`, and the header
    X-IDENTITY-HEADER: IDENTITY_HEADER; the answer's `access_token`. The token is never logged."""
    query = {"api-version": IDENTITY_API_VERSION, "resource": STORAGE_RESOURCE}
    if client_id:
        query["client_id"] = client_id
    parts = urlsplit(endpoint)
    target = f"{parts.path or '/'}?{'&'.join(filter(None, [parts.query, urlencode(query)]))}"
    connection = open_connection(parts.scheme == "https", parts.hostname or "", parts.port)
    try:
        connection.request("GET", target, headers={"X-IDENTITY-HEADER": secret})
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BlobUnreachable(f"the managed identity endpoint is unreachable while {action} ({exc})") from None
    finally:
        connection.close()
    if response.status != 200:
        raise BlobReadError(f"the managed identity endpoint answered {response.status} while {action}")
    try:
        token = json.loads(body)["access_token"]
    except (ValueError, KeyError, TypeError):
        token = None
    if not isinstance(token, str) or not token:
        raise BlobReadError(f"the managed identity endpoint gave no access token while {action}")
    return token
