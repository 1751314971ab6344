"""The cold start's plain-HTTP Blob reader (shared/blobhttp.py) against a real Azurite, beside the SDK.

The managed-identity mode, against an HTTPS Azurite that checks bearer tokens, is in
tests/test_blobhttp_identity.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.core.settings import Settings
from shared.modelstore.blobhttp import BlobReadError, HttpBlobReader
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.reads import download_version, read_current
from shared.skill.service import SkillService
from tests.azurite import ACCOUNT, DEV_KEY
from tests.modelfactory import tiny_bundle

ROOT = Path(__file__).resolve().parent.parent


def store_for(settings: Settings) -> BlobModelStore:
    store = BlobModelStore.from_settings(settings)
    assert store is not None
    return store


def reader_for(settings: Settings, environ: dict[str, str] | None = None) -> HttpBlobReader:
    reader = HttpBlobReader.from_settings(settings, environ or {})
    assert reader is not None
    return reader


IDENTITY = {"IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token", "IDENTITY_HEADER": "secret"}
AZURE = "https://acct.blob.core.windows.net"


def keyed(text: str, container: str = "models") -> Settings:
    return Settings(blob_connection_string=text, blob_container=container)


@pytest.mark.parametrize(
    ("settings", "environ"),
    [
        (keyed(f"AccountName={ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:1/{ACCOUNT};"), {}),
        (keyed("UseDevelopmentStorage=true"), {}),
        (keyed(f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={DEV_KEY};EndpointSuffix=core.net"), {}),
        (keyed(f"accountname=acct;accountkey={DEV_KEY}", container="my-models"), {}),
        (keyed(f"BlobEndpoint={AZURE}/;SharedAccessSignature=sv=2025-11-05&sig=abc"), {}),
        (Settings(blob_account_url=f"{AZURE}/", blob_container="models"), IDENTITY),
        (Settings(blob_account_url=AZURE), IDENTITY),
    ],
)  # fmt: skip
def test_the_reader_names_the_container_as_the_sdk_does(settings: Settings, environ: dict[str, str]) -> None:
    # The cache folder and the served marker are keyed by this name: both readers must agree.
    assert reader_for(settings, environ).description == store_for(settings).description
    assert "sig=" not in store_for(settings).description


@pytest.mark.parametrize(
    ("settings", "environ"),
    [
        (keyed("UseDevelopmentStorage=true"), {"HTTPS_PROXY": "http://proxy:3128"}),
        (keyed("UseDevelopmentStorage=true"), {"http_proxy": "http://proxy:3128"}),
        (keyed("AccountName=acct"), {}),
        (keyed("not a connection string"), {}),
        (Settings(blob_account_url=AZURE), {}),
        (Settings(blob_account_url=AZURE), {**IDENTITY, "AZURE_CLIENT_SECRET": "x"}),
        (Settings(blob_account_url=AZURE), {**IDENTITY, "AZURE_FEDERATED_TOKEN_FILE": "/t"}),
        (Settings(blob_account_url=f"{AZURE}/?sv=2025-11-05&sig=abc"), IDENTITY),
        (keyed(f"BlobEndpoint={AZURE}/?sv=1;AccountName=acct;AccountKey={DEV_KEY}"), {}),
        (keyed(f"BlobEndpoint=ftp://acct;AccountName=acct;AccountKey={DEV_KEY}"), {}),
    ],
)
def test_what_the_reader_does_not_do_is_left_to_the_sdk(settings: Settings, environ: dict[str, str]) -> None:
    assert HttpBlobReader.from_settings(settings, environ) is None


def test_a_shared_key_reader_downloads_what_the_sdk_published(blob_settings: Settings, tmp_path: Path) -> None:
    store = store_for(blob_settings)
    store.publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    reader = reader_for(blob_settings)
    pointer = read_current(reader)
    assert pointer is not None and pointer.version == "v1"
    sdk_pointer = store.read_pointer()
    assert sdk_pointer == pointer  # the same ETag too: the first poll's conditional read uses it
    path = download_version(reader, "v1", tmp_path / "cache", pointer.manifest_sha256)
    for name in ("model.onnx", "labels.json"):
        assert (path / name).read_bytes() == (tmp_path / "tiny" / name).read_bytes()
    assert reader.read_blob("v9/manifest.json", "reading") is None  # absent, as the SDK's None
    reader.close()


def test_azurite_checks_the_signature(blob_settings: Settings, tmp_path: Path) -> None:
    store_for(blob_settings).publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    wrong = (blob_settings.blob_connection_string or "").replace(DEV_KEY, "a2V5" * 11)
    reader = reader_for(keyed(wrong, blob_settings.blob_container))
    with pytest.raises(BlobReadError, match=r"answered 403 while reading current\.json"):
        read_current(reader)


def test_a_sas_connection_string_reads_and_its_token_is_never_shown(blob_settings: Settings, tmp_path: Path) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    store_for(blob_settings).publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    sas = generate_container_sas(
        ACCOUNT,
        blob_settings.blob_container,
        account_key=DEV_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    endpoint = store_for(blob_settings).description.rsplit("/", 1)[0]
    settings = Settings(
        blob_connection_string=f"BlobEndpoint={endpoint};SharedAccessSignature={sas}",
        blob_container=blob_settings.blob_container,
        cache_dir=tmp_path / "sas-cache",
    )
    reader = reader_for(settings)
    pointer = read_current(reader)
    assert pointer is not None
    assert download_version(reader, pointer.version, tmp_path / "dl", pointer.manifest_sha256).is_dir()
    service = SkillService(settings)
    service.holder.current()
    shown = json.dumps(service.holder.status())
    assert '"version": "v1"' in shown
    signature = sas.split("sig=", 1)[1].split("&", 1)[0]
    assert "sig=" not in shown and signature not in shown and signature not in reader.description


COLD_START = """
import json, sys
from shared.modelstore import prefetch
assert prefetch.start()
from shared.skill.service import SkillService
from shared.core.settings import Settings
service = SkillService(Settings.from_env())
status, body, _ = service.classify(open(sys.argv[1], "rb").read(), {})
first = {"status": status, "sdk": "azure.storage.blob" in sys.modules, "health": service.holder.status()}
service.holder.poll_now()
after = {"after_poll": service.holder.status(), "sdk_after_poll": "azure.storage.blob" in sys.modules}
print(json.dumps(first | after))
"""


def test_a_cold_start_answers_before_importing_the_storage_sdk(blob_settings: Settings, tmp_path: Path) -> None:
    """The SDK's import is half a bare start's time (docs/performance.md): it waits for the first poll."""
    store_for(blob_settings).publish(tiny_bundle(tmp_path / "tiny"), version="v1")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"values": []}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AZURE_", "SKILL_"))}
    env |= {
        "MODEL_BLOB_CONNECTION_STRING": blob_settings.blob_connection_string or "",
        "MODEL_BLOB_CONTAINER": blob_settings.blob_container,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [sys.executable, "-c", COLD_START, str(body)]
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert seen["status"] == 200 and seen["sdk"] is False
    assert seen["health"]["version"] == "v1" and seen["health"]["store"] == "reachable"
    assert seen["health"]["lastError"] is None
    # The first poll builds the SDK's client and asks with the prefetch's ETag: nothing changed.
    assert seen["sdk_after_poll"] is True
    after = seen["after_poll"]
    assert after["version"] == "v1" and after["store"] == "reachable" and after["lastError"] is None
    assert after["loadedAt"] == seen["health"]["loadedAt"]
