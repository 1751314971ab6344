"""The app's settings, read once from the environment (Functions app settings or local.settings.json)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shared.core.errors import SettingsError
from shared.core.limits import ImageLimits, default_decode_budget_bytes

T = TypeVar("T")

# The app's folder (host.json, the function folders, model_cache/, infra/): the package's parent.
APP_ROOT = Path(__file__).resolve().parents[2]

# Like `func start`, the command line reads the Values of this file into its environment (load_local_settings).
LOCAL_SETTINGS = APP_ROOT / "local.settings.json"

# Older names still accepted, each for the setting it stands for.
LEGACY_ALIASES = {"EXPERIMENT_NAME": "AML_EXPERIMENT_NAME"}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _get(env: Mapping[str, str], key: str, default: T, parse: Callable[[str], T], what: str) -> T:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError:
        raise SettingsError(f"setting {key}={raw!r} is invalid: expected {what}") from None


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


def _bounded_float(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


def _container_name(raw: str) -> str:
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", raw):
        raise ValueError
    return raw


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError
        return raw.lower()

    return parse


def is_loopback(host: str | None) -> bool:
    """Whether `host` is `localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _search_endpoint(raw: str) -> str:
    # A search endpoint receives an admin key or a token: https only, except plain http to a loopback address
    # (the stand-in search service of the tests).
    parsed = urllib.parse.urlsplit(raw)
    secure = parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(parsed.hostname))
    if not secure or not parsed.hostname or parsed.query or parsed.fragment or parsed.path.strip("/"):
        raise ValueError
    return f"{parsed.scheme}://{parsed.netloc}"


def _shown(scheme: str, host: str) -> str:
    """`scheme://host` for a message: the endpoint's host only, never its path, query (a SAS) or user info."""
    return f"{scheme}://[{host}]" if ":" in host else f"{scheme}://{host}"


def _blob_account_url(raw: str | None) -> str | None:
    # The store is reached with DefaultAzureCredential's token, which azure-storage-blob sends only over https
    # whatever the host (base_client.py: "Token credential is only supported with HTTPS."); Azurite, on
    # plain http, is reached with a connection string instead (docs/settings.md).
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError:
        parts = urllib.parse.urlsplit("")
    scheme = parts.scheme.lower()
    if scheme == "http" and parts.hostname:
        raise SettingsError(
            f"setting MODEL_BLOB_ACCOUNT_URL needs https: {_shown(scheme, parts.hostname)} would carry "
            "DefaultAzureCredential's token in clear text; reach Azurite with MODEL_BLOB_CONNECTION_STRING"
        )
    if scheme != "https" or not parts.hostname:
        raise SettingsError(
            "setting MODEL_BLOB_ACCOUNT_URL is invalid: expected https://<account>.blob.core.windows.net"
        )
    return raw.rstrip("/")


# What azure-storage-blob's parse_connection_str (azure/storage/blob/_shared/base_client.py) makes of a
# connection string: UseDevelopmentStorage=true is the emulator's fixed account, an account without
# BlobEndpoint or DefaultEndpointsProtocol+EndpointSuffix is https on core.windows.net.
DEVELOPMENT_STORAGE_BLOB_URL = "http://127.0.0.1:10000/devstoreaccount1"
SERVICE_HOST_BASE = "core.windows.net"
# The storage emulator's fixed, published development account (Learn, "Use the Azurite emulator", connection
# strings): the same for every Azurite, not a secret. Spelled out because azure-storage-blob releases before
# 12.28 (azureml-mlflow caps it at 12.27.1) refuse the `UseDevelopmentStorage=true` shortcut.
DEVELOPMENT_STORAGE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    f"BlobEndpoint={DEVELOPMENT_STORAGE_BLOB_URL};"
)


def storage_connection_string(text: str) -> str:
    """`text` for azure-storage-blob's from_connection_string: `UseDevelopmentStorage=true` (the key in any case,
    with or without a trailing `;`, as connection_string_blob_url reads it) becomes the emulator's full connection
    string; anything else is returned as it is."""
    pairs = [item.split("=", 1) for item in text.rstrip(";").split(";")]
    if len(pairs) == 1 and len(pairs[0]) == 2:
        key, value = pairs[0]
        if key.upper() == "USEDEVELOPMENTSTORAGE" and value == "true":
            return DEVELOPMENT_STORAGE_CONNECTION_STRING
    return text


def connection_string_blob_url(text: str) -> str | None:
    """The blob endpoint azure-storage-blob connects to for the connection string `text`, derived as its
    parse_connection_str and ContainerClient (a URL without a scheme is https) derive it: keys are
    case-insensitive, BlobEndpoint wins over DefaultEndpointsProtocol, AccountName and EndpointSuffix. None
    when the SDK would refuse the string; the store reports that when it is built."""
    pairs = [item.split("=", 1) for item in text.rstrip(";").split(";")]
    if any(len(pair) != 2 for pair in pairs):
        return None
    values = {key.upper(): value for key, value in pairs}
    if values.get("USEDEVELOPMENTSTORAGE") == "true":
        return DEVELOPMENT_STORAGE_BLOB_URL
    url: str | None = None
    if "BLOBENDPOINT" in values:
        url = values["BLOBENDPOINT"]
    elif "BLOBSECONDARYENDPOINT" in values:
        return None
    elif all(key in values for key in ("DEFAULTENDPOINTSPROTOCOL", "ACCOUNTNAME", "ENDPOINTSUFFIX")):
        url = f"{values['DEFAULTENDPOINTSPROTOCOL']}://{values['ACCOUNTNAME']}.blob.{values['ENDPOINTSUFFIX']}"
    if not url:
        if "ACCOUNTNAME" not in values:
            return None
        url = f"https://{values['ACCOUNTNAME']}.blob.{values.get('ENDPOINTSUFFIX', SERVICE_HOST_BASE)}"
    return url if url.lower().startswith("http") else f"https://{url}"


def _blob_connection_string(raw: str | None) -> str | None:
    # Requests authorized by the string's key or SAS cross the network as they are: https, or plain http to
    # a loopback address (Azurite). The message names the endpoint's host only, never the key or SAS.
    if not raw:
        return None
    url = connection_string_blob_url(raw)
    try:
        parts = urllib.parse.urlsplit(url or "")
    except ValueError:
        return raw  # the SDK refuses the URL too, and the store says so
    scheme = parts.scheme.lower()
    if parts.hostname and scheme != "https" and not (scheme == "http" and is_loopback(parts.hostname)):
        raise SettingsError(
            f"setting MODEL_BLOB_CONNECTION_STRING needs https: its blob endpoint is {_shown(scheme, parts.hostname)}, "
            "and plain http is allowed only to a loopback address (Azurite)"
        )
    return raw


def _image_accounts(raw: str | None) -> tuple[str, ...]:
    """VECTORIZE_IMAGE_ACCOUNTS: comma-separated https blob endpoints the vectorizer reads imageUrls from with
    the app's identity (a token travels only over https)."""
    accounts = []
    for part in (p.strip() for p in (raw or "").split(",")):
        if not part:
            continue
        parts = urllib.parse.urlsplit(part)
        if parts.scheme.lower() != "https" or not parts.hostname or parts.query or parts.path.strip("/"):
            raise SettingsError(
                f"setting VECTORIZE_IMAGE_ACCOUNTS is invalid: {part[:80]!r} is not a storage account's blob endpoint; "
                "expected comma-separated https://<account>.blob.core.windows.net"
            )
        accounts.append(part.rstrip("/"))
    return tuple(accounts)


def _search_object_name(raw: str) -> str:
    # Azure AI Search names of indexers, skillsets and indexes: lowercase letters, digits and dashes.
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?", raw):
        raise ValueError
    return raw


def _skill_name(raw: str) -> str:
    if len(raw) > 128 or not raw.isprintable():
        raise ValueError
    return raw


def _ncrontab(raw: str) -> str:
    # The Functions host parses the schedule; here we only catch the common mistake of a 5-field cron.
    if len(raw.split()) != 6:
        raise ValueError
    return raw


def _bool(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError


@dataclass(frozen=True)
class Settings:
    """Every setting the app reads; names match the app-setting names (see docs/settings.md)."""

    model_dir: Path | None = None
    engine_threads: int = 0
    decode_threads: int = 0
    decode_memory_mb: int = 0
    fast_jpeg_decode: bool = True
    deadline_s: float = 200.0
    max_request_bytes: int = 100 * 1024 * 1024
    max_records: int = 1000
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    min_image_side: int = 16
    default_top_k: int = 5
    api_key: str | None = field(default=None, repr=False)
    blob_connection_string: str | None = field(default=None, repr=False)
    blob_account_url: str | None = None
    blob_container: str = "models"
    # The vectorizer's imageUrl accounts beside the model store's (shared/skill/vectorizer.py).
    vectorize_image_accounts: tuple[str, ...] = ()
    azure_client_id: str | None = None
    cache_dir: Path | None = None
    poll_s: float = 60.0
    aml_subscription_id: str | None = None
    aml_resource_group: str | None = None
    aml_workspace_name: str | None = None
    aml_experiment_name: str | None = None
    azure_tenant_id: str | None = None
    azure_client_secret: str | None = field(default=None, repr=False)
    promotion: str = "better"
    refresh_schedule: str = "0 */30 * * * *"
    # Re-enrichment (shared/search/reindex.py, docs/reindex.md).
    search_endpoint: str | None = None
    search_indexer_name: str = "automl-images-indexer"
    search_skillset_name: str = "automl-images-skillset"
    search_skill_name: str = "classify-images"
    search_index_name: str = "automl-images-index"
    search_admin_key: str | None = field(default=None, repr=False)
    reindex_mode: str = "off"
    reindex_delay_s: float = 180.0

    @property
    def uses_blob_store(self) -> bool:
        return bool(self.blob_connection_string or self.blob_account_url)

    @property
    def aml_requested(self) -> bool:
        """Whether any AML_* setting is set, i.e. RefreshModel is meant to poll a workspace (it then needs all
        four, and says which are missing)."""
        return any(
            (self.aml_subscription_id, self.aml_resource_group, self.aml_workspace_name, self.aml_experiment_name)
        )

    def model_cache_dir(self) -> Path:
        """MODEL_CACHE_DIR, else model_cache/ beside the app when writable (locally), else the temp dir
        (the deployed app package is read-only)."""
        if self.cache_dir is not None:
            return self.cache_dir
        default = APP_ROOT / "model_cache"
        if os.access(default, os.W_OK):
            return default
        return Path(tempfile.gettempdir()) / "automl-skill-models"

    def usable_cache_dir(self) -> Path:
        """model_cache_dir(), created if needed and checked writable. SettingsError naming MODEL_CACHE_DIR and the
        path when it cannot be used (a bad value stops the app with a message naming the setting)."""
        path = self.model_cache_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
            problem = "" if os.access(path, os.W_OK | os.X_OK) else "the folder is not writable"
        except OSError as exc:
            problem = f"cannot create the folder ({exc.strerror or exc.__class__.__name__})"
        except ValueError:
            problem = "it holds a NUL character"
        if not problem:
            return path
        if self.cache_dir is not None:
            raise SettingsError(
                f"setting MODEL_CACHE_DIR={str(self.cache_dir)!r} cannot be used: {problem}; set it to a writable "
                "folder, or leave it empty for the default"
            )
        raise SettingsError(
            f"the model cache {path} cannot be used: {problem}; set MODEL_CACHE_DIR to a writable folder"
        )

    def decode_budget_bytes(self) -> int:
        """DECODE_MEMORY_MB in bytes; 0 means a quarter of the instance's memory, at most 512 MiB."""
        return self.decode_memory_mb << 20 if self.decode_memory_mb else default_decode_budget_bytes()

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels, min_side=self.min_image_side
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build from a mapping (default `os.environ`); SettingsError names the first bad key."""
        env = os.environ if env is None else env
        model_dir = env.get("AZUREML_MODEL_DIR", "").strip()
        poll_s = _get(env, "MODEL_POLL_SECONDS", 60.0, _bounded_float(1, 86_400), "seconds from 1 to 86400")
        search_endpoint = _get(
            env,
            "SEARCH_ENDPOINT",
            None,
            _search_endpoint,
            "the search service's URL, https://<service>.search.windows.net (plain http only to a loopback address)",
        )
        reindex_mode = _get(
            env,
            "REINDEX_MODE",
            "full" if search_endpoint else "off",
            _choice("off", "full", "skills"),
            "off, full or skills",
        )
        if reindex_mode != "off" and not search_endpoint:
            raise SettingsError(
                f"setting REINDEX_MODE={reindex_mode} needs SEARCH_ENDPOINT: set it to the search service's URL, "
                "or set REINDEX_MODE=off"
            )
        search_name = "lowercase letters, digits and dashes (1-128, starting and ending with a letter or digit)"
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            engine_threads=_get(env, "ENGINE_THREADS", 0, _bounded_int(0, 256), "an integer from 0 (automatic) to 256"),
            decode_threads=_get(
                env, "DECODE_THREADS", 0, _bounded_int(0, 64), "an integer from 0 (one per core) to 64"
            ),
            decode_memory_mb=_get(
                env,
                "DECODE_MEMORY_MB",
                0,
                _bounded_int(0, 1 << 20),
                "MiB, 0 (a quarter of the instance's memory, at most 512) or more",
            ),
            fast_jpeg_decode=_get(env, "FAST_JPEG_DECODE", True, _bool, "true or false"),
            deadline_s=_get(env, "SKILL_DEADLINE_SECONDS", 200.0, _bounded_float(1, 230), "seconds from 1 to 230"),
            max_request_bytes=_get(
                env, "SKILL_MAX_REQUEST_BYTES", 100 * 1024 * 1024, _bounded_int(1024, 1 << 31), "bytes, 1024 or more"
            ),
            max_records=_get(env, "SKILL_MAX_RECORDS", 1000, _bounded_int(1, 100_000), "an integer from 1 to 100000"),
            max_image_bytes=_get(
                env, "SKILL_MAX_IMAGE_BYTES", 32 * 1024 * 1024, _bounded_int(1024, 1 << 31), "bytes, 1024 or more"
            ),
            max_image_pixels=_get(
                env, "SKILL_MAX_IMAGE_PIXELS", 50_000_000, _bounded_int(64, 1 << 31), "pixels, 64 or more"
            ),
            min_image_side=_get(env, "SKILL_MIN_IMAGE_SIDE", 16, _bounded_int(1, 4096), "pixels from 1 to 4096"),
            default_top_k=_get(env, "SKILL_DEFAULT_TOP_K", 5, _bounded_int(1, 1000), "an integer from 1 to 1000"),
            api_key=env.get("SKILL_API_KEY") or None,
            blob_connection_string=_blob_connection_string(env.get("MODEL_BLOB_CONNECTION_STRING")),
            blob_account_url=_blob_account_url(env.get("MODEL_BLOB_ACCOUNT_URL")),
            blob_container=_get(
                env,
                "MODEL_BLOB_CONTAINER",
                "models",
                _container_name,
                "a container name (3-63 lowercase letters, digits and hyphens)",
            ),
            vectorize_image_accounts=_image_accounts(env.get("VECTORIZE_IMAGE_ACCOUNTS")),
            azure_client_id=env.get("AZURE_CLIENT_ID") or None,
            cache_dir=Path(cache) if (cache := env.get("MODEL_CACHE_DIR", "").strip()) else None,
            poll_s=poll_s,
            aml_subscription_id=env.get("AML_SUBSCRIPTION_ID") or None,
            aml_resource_group=env.get("AML_RESOURCE_GROUP") or None,
            aml_workspace_name=env.get("AML_WORKSPACE_NAME") or None,
            # EXPERIMENT_NAME is the older PowerSkill's setting.
            aml_experiment_name=env.get("AML_EXPERIMENT_NAME") or env.get("EXPERIMENT_NAME") or None,
            azure_tenant_id=env.get("AZURE_TENANT_ID") or None,
            azure_client_secret=env.get("AZURE_CLIENT_SECRET") or None,
            promotion=_get(env, "MODEL_PROMOTION", "better", _choice("better", "newest"), "better or newest"),
            refresh_schedule=_get(
                env, "MODEL_REFRESH_SCHEDULE", "0 */30 * * * *", _ncrontab, "a six-field NCRONTAB expression"
            ),
            search_endpoint=search_endpoint,
            search_indexer_name=_get(
                env, "SEARCH_INDEXER_NAME", "automl-images-indexer", _search_object_name, search_name
            ),
            search_skillset_name=_get(
                env, "SEARCH_SKILLSET_NAME", "automl-images-skillset", _search_object_name, search_name
            ),
            search_skill_name=_get(
                env, "SEARCH_SKILL_NAME", "classify-images", _skill_name, "a skill name of 1-128 printable characters"
            ),
            search_index_name=_get(env, "SEARCH_INDEX_NAME", "automl-images-index", _search_object_name, search_name),
            search_admin_key=env.get("SEARCH_ADMIN_KEY") or None,
            reindex_mode=reindex_mode,
            # The time every instance needs to load a new version: two polls, plus a minute to download it.
            reindex_delay_s=_get(
                env,
                "REINDEX_DELAY_SECONDS",
                2 * poll_s + 60,
                _bounded_float(0, 7 * 86_400),
                "seconds from 0 to 604800",
            ),
        )


class _RecordingEnv(dict[str, str]):
    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def setting_names() -> frozenset[str]:
    """Every app-setting name Settings.from_env reads (legacy aliases included), for docs and deployment checks."""
    env = _RecordingEnv()
    Settings.from_env(env)
    return frozenset(env.asked)


def load_local_settings(path: Path, environ: MutableMapping[str, str]) -> list[str]:
    """Copy the `Values` of a local.settings.json into `environ` as `func start` does: a name already in
    the environment keeps its value. Returns the names set. A missing file sets nothing; SettingsError
    for a file that is not JSON, encrypted, or has no `Values` object."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"{path} is not valid JSON ({exc}); fix it or remove it") from None
    if not isinstance(document, dict) or not isinstance(document.get("Values", {}), dict):
        raise SettingsError(f'{path} must be a JSON object with a "Values" object of setting names and values')
    if document.get("IsEncrypted") is True:
        raise SettingsError(f"{path} is encrypted (IsEncrypted: true); run `func settings decrypt` first")
    applied = []
    for name, value in (document.get("Values") or {}).items():
        if name in environ or value is None:
            continue
        environ[name] = value if isinstance(value, str) else json.dumps(value)
        applied.append(name)
    return applied
