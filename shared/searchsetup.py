"""`python -m shared search-setup`: the Azure AI Search data source, index, skillset and indexer that put
the skill into an enrichment pipeline, rendered from the templates in infra/search/ and created or updated
with the REST API (PUT, so running it again updates them in place).

Why the index has these fields: the skill's context is `/document/normalized_images/*`, so it answers once
per normalized image, and a search document (one blob) has as many answers as it has images: one for an
image file, one per embedded image for a PDF or an Office file. A path through `*` yields a collection, so
no document-level `Edm.String label` could hold a PDF's answers. The index therefore has

- `images`, Collection(Edm.ComplexType): one entry per image holding the skill's outputs with their own
  types, `label` (Edm.String, null below the threshold), `confidence` (Edm.Double), `labels`
  (Collection(Edm.String)), `predictions` (Collection(Edm.ComplexType) of `label` Edm.String and `score`
  Edm.Double), `modelVersion` (Edm.String), plus the image's `pageNumber` (Edm.Int32). A Shaper skill
  builds that object per image (`/document/normalized_images/*/classification`), so one image's label and
  score stay together: `images/any(i: i/label eq 'cat' and i/confidence ge 0.8)`;
- `labels`, Collection(Edm.String): every label at or above the threshold in any image of the document
  (`/document/normalized_images/*/labels/*`), for plain filters and facets (`labels/any(l: l eq 'cat')`).

The data source connects with the search service's managed identity (`ResourceId=<storage account id>;`,
no key); the skill authenticates with a function key in `x-functions-key` or, with `--auth-resource-id`,
with Entra ID (`authResourceId` `<appId>/.default`, App Service authentication on the function app).
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.errors import ClassifierError

API_VERSION = "2024-07-01"
SEARCH_SCOPE = "https://search.azure.com/.default"
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "infra" / "search"
# Object detection models (docs/detection.md): `objects` (one entry per detected object) and `objectLabels`.
DETECTION_TEMPLATE_DIR = TEMPLATE_DIR / "detection"
# Creation order: each object names the ones before it.
KINDS = ("datasource", "index", "skillset", "indexer")
COLLECTIONS = {"datasource": "datasources", "index": "indexes", "skillset": "skillsets", "indexer": "indexers"}
DEFAULT_PREFIX = "automl-images"
DEFAULT_CONTAINER = "images"
DEFAULT_KEY_ENV = "SEARCH_ADMIN_KEY"
DEFAULT_FUNCTION_KEY_ENV = "SKILL_FUNCTION_KEY"
DEFAULT_BATCH_SIZE = 8
DEFAULT_DEGREE_OF_PARALLELISM = 4
# A detection run costs seconds of CPU per image (docs/detection.md, `make bench` (g)).
DETECTION_BATCH_SIZE = 4
DETECTION_DEGREE_OF_PARALLELISM = 2
# Azure AI Search allows at most 10 parallel calls per skill.
MAX_DEGREE_OF_PARALLELISM = 10
MAX_BATCH_SIZE = 1000
REQUEST_TIMEOUT_S = 60.0
WEB_API_SKILL = "#Microsoft.Skills.Custom.WebApiSkill"

_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")
_OBJECT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,118}[a-z0-9])?")
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_STORAGE_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Storage/storageAccounts/[a-z0-9]{3,24}",
    re.IGNORECASE,
)


class SearchSetupError(ClassifierError):
    """search-setup cannot go on; the message is one line, safe to show (never a key)."""


@dataclass(frozen=True)
class ResourceNames:
    """The names of the four search objects."""

    datasource: str
    index: str
    skillset: str
    indexer: str

    @classmethod
    def from_prefix(cls, prefix: str = DEFAULT_PREFIX) -> ResourceNames:
        """`<prefix>-datasource`, `-index`, `-skillset`, `-indexer`. SearchSetupError for a bad prefix."""
        if not _OBJECT_NAME.fullmatch(prefix) or len(prefix) > 100:
            raise SearchSetupError(
                f"name prefix {prefix!r} is invalid: use 1-100 lowercase letters, digits and dashes, "
                "starting and ending with a letter or digit"
            )
        return cls(f"{prefix}-datasource", f"{prefix}-index", f"{prefix}-skillset", f"{prefix}-indexer")


@dataclass(frozen=True)
class FunctionKeyAuth:
    """The skill sends ClassifySkill's function key in `x-functions-key`. `key` is a secret (never shown);
    `source` names the environment variable it came from, for messages and --dry-run."""

    key: str = field(repr=False)
    source: str = DEFAULT_FUNCTION_KEY_ENV


@dataclass(frozen=True)
class EntraAuth:
    """The skill gets a token for the function app's Entra ID app registration with the search service's
    managed identity. `app_id` is the registration's application (client) id, or the full resource id.

    ClassifySkill's `authLevel` is `function`, so the Functions host still wants a function key behind App
    Service authentication: `key` (when given) is sent too. Without it, the function must be made anonymous
    (only with App Service authentication enforced)."""

    app_id: str
    key: str | None = field(default=None, repr=False)
    source: str = DEFAULT_FUNCTION_KEY_ENV

    @property
    def resource_id(self) -> str:
        return self.app_id if self.app_id.endswith("/.default") else f"{self.app_id}/.default"


SkillAuth = FunctionKeyAuth | EntraAuth


class AccessTokenLike(Protocol):
    @property
    def token(self) -> str: ...


class TokenCredentialLike(Protocol):
    """What apply() needs of an azure-identity credential (DefaultAzureCredential)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessTokenLike: ...


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(url: str, what: str) -> str:
    """The URL without a trailing slash; https only, except plain http to this machine (tests, emulators)."""
    parsed = urllib.parse.urlsplit(url.strip())
    secure = parsed.scheme == "https" or (parsed.scheme == "http" and _is_loopback(parsed.hostname))
    if not secure or not parsed.hostname:
        raise SearchSetupError(f"{what} {url!r} is invalid: expected an https:// URL")
    if parsed.query or parsed.fragment:
        raise SearchSetupError(f"{what} {url!r} is invalid: give it without a query string")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def search_endpoint_url(search_endpoint: str) -> str:
    """`https://<service>.search.windows.net`, validated and without a trailing slash."""
    return _base_url(search_endpoint, "search endpoint")


def skill_uri(function_url: str) -> str:
    """ClassifySkill's URI from the app's URL, with or without `/api/classify` already on it."""
    base = _base_url(function_url, "function URL")
    if base.endswith("/api/classify"):
        base = base[: -len("/api/classify")]
    return f"{base}/api/classify"


def _load_templates(template_dir: Path) -> dict[str, dict[str, Any]]:
    templates: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        path = template_dir / f"{kind}.json"
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SearchSetupError(f"cannot read the template {path} ({exc.strerror})") from None
        except ValueError as exc:
            raise SearchSetupError(f"template {path} is not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise SearchSetupError(f"template {path} must hold a JSON object")
        templates[kind] = loaded
    return templates


def _substitute(value: Any, values: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise SearchSetupError(f"template {where} has the placeholder {{{{{name}}}}} that nothing fills")
            return values[name]

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(item, values, where) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, values, where) for key, item in value.items()}
    return value


def _web_api_skills(skillset: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [s for s in skillset.get("skills", []) if isinstance(s, dict) and s.get("@odata.type") == WEB_API_SKILL]


def render(
    search_endpoint: str,
    function_url: str,
    *,
    names: ResourceNames | None = None,
    auth: SkillAuth,
    storage_resource_id: str,
    container: str = DEFAULT_CONTAINER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    degree_of_parallelism: int = DEFAULT_DEGREE_OF_PARALLELISM,
    template_dir: Path = TEMPLATE_DIR,
) -> dict[str, dict[str, Any]]:
    """The four objects, keys "datasource", "index", "skillset", "indexer", as the REST API takes them.

    `storage_resource_id` is the storage account's resource id (the data source connects with the search
    service's managed identity); `container` holds the images. With FunctionKeyAuth the skill carries the
    key in `httpHeaders` (use redacted() before showing the result); with EntraAuth it has
    `authResourceId` instead. Raises SearchSetupError for a bad argument or template.
    """
    search_endpoint_url(search_endpoint)
    uri = skill_uri(function_url)
    names = names or ResourceNames.from_prefix()
    if not _STORAGE_ID.fullmatch(storage_resource_id.strip()):
        raise SearchSetupError(
            f"storage resource id {storage_resource_id!r} is invalid: expected /subscriptions/<id>/resourceGroups/"
            "<group>/providers/Microsoft.Storage/storageAccounts/<account> (azd: STORAGE_ACCOUNT_ID)"
        )
    if not _CONTAINER_NAME.fullmatch(container):
        raise SearchSetupError(
            f"container {container!r} is invalid: expected 3-63 lowercase letters, digits and hyphens"
        )
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise SearchSetupError(f"batch size {batch_size} is invalid: expected 1 to {MAX_BATCH_SIZE} (4-16 for images)")
    if not 1 <= degree_of_parallelism <= MAX_DEGREE_OF_PARALLELISM:
        raise SearchSetupError(
            f"degree of parallelism {degree_of_parallelism} is invalid: expected 1 to {MAX_DEGREE_OF_PARALLELISM}"
        )
    templates = _load_templates(template_dir)
    skillset = templates["skillset"]
    web_api = _web_api_skills(skillset)
    if len(web_api) != 1:
        raise SearchSetupError(f"template {template_dir / 'skillset.json'} must have exactly one {WEB_API_SKILL}")
    if isinstance(auth, EntraAuth):
        if auth.key is None:
            web_api[0].pop("httpHeaders", None)
        web_api[0]["authResourceId"] = auth.resource_id
    values = {
        "DATASOURCE_NAME": names.datasource,
        "INDEX_NAME": names.index,
        "SKILLSET_NAME": names.skillset,
        "INDEXER_NAME": names.indexer,
        "STORAGE_RESOURCE_ID": storage_resource_id.strip(),
        "CONTAINER": container,
        "FUNCTION_URL": uri[: -len("/api/classify")],
    }
    if auth.key is not None:
        values["FUNCTION_KEY"] = auth.key
    rendered = {kind: _substitute(templates[kind], values, str(template_dir / f"{kind}.json")) for kind in KINDS}
    skill = _web_api_skills(rendered["skillset"])[0]
    skill["batchSize"] = batch_size
    skill["degreeOfParallelism"] = degree_of_parallelism
    return rendered


def redacted(rendered: Mapping[str, dict[str, Any]], source: str = DEFAULT_FUNCTION_KEY_ENV) -> dict[str, Any]:
    """A copy safe to print: every skill header value (the function key) replaced by where it comes from."""
    shown = copy.deepcopy(dict(rendered))
    for skill in _web_api_skills(shown.get("skillset", {})):
        headers = skill.get("httpHeaders")
        if isinstance(headers, dict):
            skill["httpHeaders"] = {name: f"<redacted: ${source}>" for name in headers}
    return shown


def _service_message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read(64 * 1024) or b"{}")
    except (OSError, ValueError):
        return ""
    message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        return ""
    return " ".join(message.split())[:500]


def _put(url: str, body: Mapping[str, Any], headers: Mapping[str, str], timeout_s: float) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=dict(headers), method="PUT")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        status: int = response.status
        return status


def _bearer_token(credential: TokenCredentialLike) -> str:
    from azure.core.exceptions import ClientAuthenticationError

    try:
        return credential.get_token(SEARCH_SCOPE).token
    except ClientAuthenticationError:
        raise SearchSetupError(
            "no Azure credential could get a token for Azure AI Search: sign in with `az login` (or run where a "
            f"managed identity is available), or set {DEFAULT_KEY_ENV} (or --key-env NAME) to an admin key"
        ) from None


def apply(
    rendered: Mapping[str, Mapping[str, Any]],
    search_endpoint: str,
    credential_or_key: str | TokenCredentialLike,
    *,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> list[str]:
    """Create or update the data source, index, skillset and indexer, in that order, with PUT
    `<endpoint>/<collection>/<name>?api-version=2024-07-01`.

    `credential_or_key` is an admin key (sent as `api-key`) or a credential such as DefaultAzureCredential
    (a bearer token for https://search.azure.com/.default). Returns one line per object, like
    "index automl-images-index: created". Raises SearchSetupError on the first failure (unreachable
    service, refused credentials, an object the service rejects); objects before it stay as written.
    """
    endpoint = search_endpoint_url(search_endpoint)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if isinstance(credential_or_key, str):
        headers["api-key"] = credential_or_key
        refused_hint = "check that it is an admin key (not a query key) of this service"
        what = "the admin key"
    else:
        headers["Authorization"] = f"Bearer {_bearer_token(credential_or_key)}"
        refused_hint = (
            "your identity needs the Search Service Contributor role on the service, and the service's API "
            "access control must allow role-based access"
        )
        what = "your Entra ID token"
    done: list[str] = []
    for kind in KINDS:
        body = rendered[kind]
        name = str(body.get("name", ""))
        url = f"{endpoint}/{COLLECTIONS[kind]}/{urllib.parse.quote(name, safe='')}?api-version={API_VERSION}"
        try:
            status = _put(url, body, headers, timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise SearchSetupError(
                    f"search service {endpoint} refused {what} ({exc.code} {exc.reason}) while writing the {kind} "
                    f"{name!r}: {refused_hint}"
                ) from None
            detail = _service_message(exc)
            raise SearchSetupError(
                f"search service {endpoint} answered {exc.code} {exc.reason} to the {kind} {name!r}"
                + (f": {detail}" if detail else "")
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise SearchSetupError(f"search service {endpoint} is unreachable ({reason})") from None
        done.append(f"{kind} {name}: {'created' if status == 201 else 'updated'}")
    return done


def _env_value(env: Mapping[str, str], name: str, what: str, hint: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SearchSetupError(f"environment variable {name} is not set: put {what} there, {hint}")
    return value


def _skill_auth(args: argparse.Namespace, env: Mapping[str, str], dry_run: bool) -> SkillAuth:
    app_id: str | None = getattr(args, "auth_resource_id", None)
    source: str = getattr(args, "function_key_env", None) or DEFAULT_FUNCTION_KEY_ENV
    if app_id:
        return EntraAuth(app_id.strip(), key=env.get(source, "").strip() or None, source=source)
    if dry_run:
        return FunctionKeyAuth(key=env.get(source, ""), source=source)
    key = _env_value(
        env,
        source,
        "ClassifySkill's function key",
        "for example with `az functionapp function keys list -g <group> -n <app> --function-name ClassifySkill`, "
        "or pass --auth-resource-id for Entra ID",
    )
    return FunctionKeyAuth(key=key, source=source)


def _search_credential(key_env: str | None, env: Mapping[str, str]) -> str | TokenCredentialLike:
    if key_env:
        return _env_value(
            env,
            key_env,
            "an admin key of the search service",
            "for example with `az search admin-key show -g <group> --service-name <service>`, or leave out "
            "--key-env to sign in with Entra ID",
        )
    key = env.get(DEFAULT_KEY_ENV, "").strip()
    if key:
        return key
    from azure.identity import DefaultAzureCredential

    credential: TokenCredentialLike = DefaultAzureCredential()
    return credential


def main_search_setup(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """The `search-setup` command. `args` has search_endpoint, function_url, storage_resource_id (str),
    dry_run (bool) and optionally container, prefix, auth_resource_id, function_key_env, key_env,
    batch_size, degree_of_parallelism. Prints the rendered JSON (--dry-run, the function key redacted) or
    one line per object written; on failure one `error:` line on stderr and status 1.
    """
    env = os.environ if env is None else env
    dry_run = bool(getattr(args, "dry_run", False))
    try:
        auth = _skill_auth(args, env, dry_run)
        detection = bool(getattr(args, "detection", False))
        rendered = render(
            args.search_endpoint,
            args.function_url,
            names=ResourceNames.from_prefix(getattr(args, "prefix", None) or DEFAULT_PREFIX),
            auth=auth,
            storage_resource_id=args.storage_resource_id,
            container=getattr(args, "container", None) or DEFAULT_CONTAINER,
            batch_size=getattr(args, "batch_size", None) or (DETECTION_BATCH_SIZE if detection else DEFAULT_BATCH_SIZE),
            degree_of_parallelism=getattr(args, "degree_of_parallelism", None)
            or (DETECTION_DEGREE_OF_PARALLELISM if detection else DEFAULT_DEGREE_OF_PARALLELISM),
            template_dir=DETECTION_TEMPLATE_DIR if detection else TEMPLATE_DIR,
        )
        if dry_run:
            sys.stdout.write(json.dumps(redacted(rendered, auth.source), indent=2) + "\n")
            return 0
        credential = _search_credential(getattr(args, "key_env", None), env)
        for line in apply(rendered, args.search_endpoint, credential):
            sys.stdout.write(line + "\n")
    except SearchSetupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0
