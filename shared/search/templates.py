"""The Azure AI Search data source, index, skillset and indexer that put the skill into an enrichment
pipeline, rendered from the templates in infra/search/ (`render`); shared.search.apply writes them with
azure-search-documents and `python -m shared search-setup` (shared.cli.search) drives both.

Why the index has these fields: the skill's context is `/document/normalized_images/*`, so it answers once
per normalized image, and a search document (one blob) has as many answers as it has images: one for an
image file, one per embedded image for a PDF or an Office file. A path through `*` yields a collection, so
no document-level `Edm.String label` could hold a PDF's answers. The index therefore has

- `images`, Collection(Edm.ComplexType): one entry per image holding the skill's outputs with their own
  types, `label` (Edm.String, null below the threshold), `confidence` (Edm.Double), `labels`
  (Collection(Edm.String)), `modelVersion` (Edm.String), plus the image's `pageNumber` (Edm.Int32). A Shaper
  skill builds that object per image (`/document/normalized_images/*/classification`), so one image's label
  and score stay together: `images/any(i: i/label eq 'cat' and i/confidence ge 0.8)`;
- `labels`, Collection(Edm.String): every label at or above the threshold in any image of the document
  (`/document/normalized_images/*/labels/*`), for plain filters and facets (`labels/any(l: l eq 'cat')`).

Azure AI Search stores at most 3,000 elements across all complex collections of one document (string
collections do not count), and the blob indexer extracts at most 1,000 images from one document. So each
complex collection holds exactly one element per image (no nested complex collection such as the top-k
`predictions`): `images` costs at most 1,000 elements, leaving 2,000 for other per-image collections.
complex_elements_per_document() checks that bound on every render.

With `--image-analysis` the skillset also runs the built-in ImageAnalysisSkill and the index gets its
outputs as string (and boolean) collections, not as the complex types the skill returns, for the same
reason: a document's tags would otherwise count against the 3,000 elements.

The data source connects with the search service's managed identity (`ResourceId=<storage account id>;`,
no key); the skill authenticates with a function key in `x-functions-key` or, with `--auth-resource-id`,
with Entra ID (`authResourceId` `<appId>/.default`, App Service authentication on the function app).

With `--enrichment-cache` the indexer also gets an enrichment cache (`cache`, a preview feature) in a storage
account, which re-enrichment's REINDEX_MODE=skills needs (shared/search/reindex.py).
"""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.core.errors import AppError
from shared.core.settings import APP_ROOT, is_loopback

TEMPLATE_DIR = APP_ROOT / "infra" / "search"
# Object detection models (docs/detection.md): `objects` (one entry per detected object) and `objectLabels`.
DETECTION_TEMPLATE_DIR = TEMPLATE_DIR / "detection"
# Instance segmentation models (docs/segmentation.md): the detection shape plus `polygons` (one JSON string per
# object) in each image's element.
SEGMENTATION_TEMPLATE_DIR = TEMPLATE_DIR / "segmentation"
# Creation order: each object names the ones before it.
KINDS = ("datasource", "index", "skillset", "indexer")
# search-setup --vectors per-image adds a second index, one search document per image (index projections); the
# skillset names it, so it is written before the skillset.
IMAGE_INDEX = "imageindex"
WRITE_ORDER = ("datasource", "index", IMAGE_INDEX, "skillset", "indexer")
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
WEB_API_SKILL = "#Microsoft.Skills.Custom.WebApiSkill"
IMAGE_ANALYSIS_SKILL = "#Microsoft.Skills.Vision.ImageAnalysisSkill"
SHAPER_SKILL = "#Microsoft.Skills.Util.ShaperSkill"
AI_SERVICES_BY_IDENTITY = "#Microsoft.Azure.Search.AIServicesByIdentity"
COGNITIVE_SERVICES_BY_KEY = "#Microsoft.Azure.Search.CognitiveServicesByKey"
# Service limits, index limits: "Maximum elements across all complex collections per document: 3000"
# (complex collections only, not string collections).
MAX_COMPLEX_ELEMENTS_PER_DOCUMENT = 3000
# "Extract text and information from images": at most 1,000 images are extracted from a document.
MAX_IMAGES_PER_DOCUMENT = 1000
PER_IMAGE = "/document/normalized_images/*"
IMAGE_ACTIONS = {False: "generateNormalizedImages", True: "generateNormalizedImagePerPage"}
# `search-setup --keyframes`: the index fields filled from the keyframe blobs' metadata, and their defaults.
KEYFRAME_FIELDS = ("sourceVideo", "timestampMs")
KEYFRAME_EXTENSIONS = ".jpg,.jpeg"
KEYFRAMES_CONTAINER = "keyframes"
KEYFRAMES_PREFIX = "automl-keyframes"

# ImageAnalysisSkill visual feature -> (its output's targetName, [(index field, type, path below the image)]).
# Flattened to simple collections: they do not count against MAX_COMPLEX_ELEMENTS_PER_DOCUMENT.
_ANALYSIS_OUTPUTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "tags": ("visionTags", [("imageTags", "Collection(Edm.String)", "visionTags/*/name")]),
    "description": (
        "visionDescription",
        [("imageCaptions", "Collection(Edm.String)", "visionDescription/captions/*/text")],
    ),
    "categories": ("visionCategories", [("imageCategories", "Collection(Edm.String)", "visionCategories/*/name")]),
    "brands": ("visionBrands", [("imageBrands", "Collection(Edm.String)", "visionBrands/*/name")]),
    "objects": ("visionObjects", [("imageObjects", "Collection(Edm.String)", "visionObjects/*/object")]),
    "adult": (
        "visionAdult",
        [
            ("imageAdultContent", "Collection(Edm.Boolean)", "visionAdult/isAdultContent"),
            ("imageRacyContent", "Collection(Edm.Boolean)", "visionAdult/isRacyContent"),
            ("imageGoryContent", "Collection(Edm.Boolean)", "visionAdult/isGoryContent"),
        ],
    ),
}
VISUAL_FEATURES = tuple(sorted(_ANALYSIS_OUTPUTS))
DEFAULT_VISUAL_FEATURES = ("tags", "description")
# Fields whose text is searched but not filtered or faceted (sentences, not keywords).
_SENTENCE_FIELDS = frozenset({"imageCaptions"})

_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OBJECT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,118}[a-z0-9])?")
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_STORAGE_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Storage/storageAccounts/[a-z0-9]{3,24}",
    re.IGNORECASE,
)


class SearchSetupError(AppError):
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

    def __post_init__(self) -> None:
        check_app_id(self.app_id)

    @property
    def resource_id(self) -> str:
        return self.app_id if self.app_id.endswith("/.default") else f"{self.app_id}/.default"


SkillAuth = FunctionKeyAuth | EntraAuth

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def check_app_id(value: str) -> str:
    """`value` when it is an app registration's application (client) id, a GUID, or a full token scope ending
    in `/.default`; SearchSetupError saying what is wrong otherwise. An application ID URI such as
    `api://<appId>` without `/.default` is refused: the skill would ask for a token without a scope, a common
    cause of 401s (docs/search.md)."""
    if _GUID.fullmatch(value) or (value.endswith("/.default") and value.removesuffix("/.default").strip("/")):
        return value
    example = "00000000-0000-0000-0000-000000000000"
    if value.lower().startswith(("api://", "https://", "http://")):
        raise SearchSetupError(
            f"--auth-resource-id {value!r} is an application ID URI, not an application id: pass the app "
            f"registration's application (client) id, a GUID like {example}; the skill then asks for "
            "<appId>/.default (the api:// form is a common cause of 401s)"
        )
    raise SearchSetupError(
        f"--auth-resource-id {value!r} is not an application id: expected the app registration's application "
        f"(client) id, a GUID like {example} (or a full scope ending in /.default)"
    )


@dataclass(frozen=True)
class AIServicesIdentity:
    """Bill the ImageAnalysisSkill to an AI Services resource with the search service's managed identity
    (keyless; the identity needs Cognitive Services User on the resource). `endpoint` is the resource's
    `https://<name>.cognitiveservices.azure.com` or `https://<name>.services.ai.azure.com`."""

    endpoint: str


@dataclass(frozen=True)
class AIServicesKey:
    """Bill the ImageAnalysisSkill with a key of an AI Services resource in the search service's region.
    `key` is a secret (never shown); `source` names the environment variable it came from."""

    key: str = field(repr=False)
    source: str


@dataclass(frozen=True)
class Vectors:
    """The index's image vector field and its vectorizer (docs/vectors.md): `dimensions` of the current model's
    embedding; the vectorizer calls /api/vectorize with VectorizeImage's function key `key` (a secret, never shown;
    `source` names its variable), or with the skill's Entra ID app registration when the skill uses one.
    `per_image`: one search document per image in a second index (`<prefix>-image-index`, index projections)
    instead of one vector field on the document (for documents with one image)."""

    dimensions: int
    key: str | None = field(default=None, repr=False)
    source: str = "VECTORIZE_FUNCTION_KEY"
    per_image: bool = False


VECTOR_FIELD = "imageEmbedding"
VECTOR_PROFILE = "image-embedding-profile"
VECTOR_ALGORITHM = "image-embedding-hnsw"
VECTORIZER = "image-vectorizer"
# Azure AI Search's vector fields hold 2 to 4,096 dimensions (Learn, "Create a vector index").
MAX_VECTOR_DIMENSIONS = 4096


@dataclass(frozen=True)
class ImageAnalysis:
    """The built-in ImageAnalysisSkill beside the classifier: its visual features and who pays for it."""

    billing: AIServicesIdentity | AIServicesKey
    features: tuple[str, ...] = DEFAULT_VISUAL_FEATURES


def _base_url(url: str, what: str) -> str:
    """The URL without a trailing slash; https only, except plain http to a loopback address (tests, emulators)."""
    parsed = urllib.parse.urlsplit(url.strip())
    secure = parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(parsed.hostname))
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
    image_analysis: ImageAnalysis | None = None,
    per_page: bool = False,
    enrichment_cache: str | None = None,
    vectors: Vectors | None = None,
    template_dir: Path = TEMPLATE_DIR,
    keyframes: bool = False,
) -> dict[str, dict[str, Any]]:
    """The four objects, keys "datasource", "index", "skillset", "indexer", as the REST API takes them.

    `storage_resource_id` is the storage account's resource id (the data source connects with the search
    service's managed identity); `container` holds the images. With FunctionKeyAuth the skill carries the
    key in `httpHeaders` (use redacted() before showing the result); with EntraAuth it has
    `authResourceId` instead. `image_analysis` adds the built-in ImageAnalysisSkill, its index fields and
    output field mappings, and the skillset's `cognitiveServices` billing (a key is redacted() too);
    `per_page` renders each PDF page as one image (`generateNormalizedImagePerPage`). `enrichment_cache` is
    the resource id of a storage account for the indexer's enrichment cache (`cache`:
    `storageConnectionString` `ResourceId=<id>;`, the search service's managed identity, and
    `enableReprocessing` true), which REINDEX_MODE=skills needs; the indexer is then written with a preview
    API version (api_version_for()). `keyframes` renders the index of video keyframes (`python -m shared
    keyframes`): the fields `sourceVideo` and `timestampMs` filled from the keyframe blobs' metadata (add_keyframes()).
    Raises
    SearchSetupError for a bad argument or template, or an index whose complex collections could exceed
    Azure AI Search's 3,000 elements per document.
    """
    search_endpoint_url(search_endpoint)
    uri = skill_uri(function_url)
    names = names or ResourceNames.from_prefix()
    for what, value in (("storage resource id", storage_resource_id), ("cache storage resource id", enrichment_cache)):
        if value is not None and not _STORAGE_ID.fullmatch(value.strip()):
            raise SearchSetupError(
                f"{what} {value!r} is invalid: expected /subscriptions/<id>/resourceGroups/<group>/providers/"
                "Microsoft.Storage/storageAccounts/<account> (azd: STORAGE_ACCOUNT_ID)"
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
    configuration = rendered["indexer"].setdefault("parameters", {}).setdefault("configuration", {})
    configuration["imageAction"] = IMAGE_ACTIONS[per_page]
    if image_analysis is not None:
        _add_image_analysis(rendered, image_analysis)
    if keyframes:
        add_keyframes(rendered)
    if enrichment_cache is not None:
        # Microsoft Learn, "Configure an enrichment cache" and REST "Indexers - Create Or Update" (preview):
        # `storageConnectionString` may be `ResourceId=<account id>;` for the search service's system-assigned
        # identity (no `identity` given), which needs Storage Blob Data Contributor and Storage Table Data
        # Contributor on the account; `enableReprocessing` true lets Reset Skills re-run skills from the cache.
        rendered["indexer"]["cache"] = {
            "storageConnectionString": f"ResourceId={enrichment_cache.strip()};",
            "enableReprocessing": True,
        }
    if vectors is not None:
        _add_vectors(rendered, vectors, uri[: -len("/api/classify")], auth, f"{names.index[: -len('-index')]}")
    complex_elements_per_document(rendered["index"], rendered["indexer"], rendered["skillset"])
    return rendered


def _add_vectors(
    rendered: dict[str, dict[str, Any]], vectors: Vectors, base: str, auth: SkillAuth, prefix: str
) -> None:
    """The skill answers `embedding` (`?embedding=true`); the index gets the vector field, an HNSW profile with
    cosine and the customWebApi vectorizer on /api/vectorize. One image per document (an image file): the
    indexer maps the document's image's embedding (`/document/normalized_images/0/embedding`) to the field.
    Per image: a second index holds one search document per image, written by the skillset's index projection
    (GA; the parent documents still go to the first index). Learn: "Create a vector index" (field, profile,
    HNSW), "Custom Web API vectorizer" (parameters), "Define an index projection" (two indexes)."""
    if not 2 <= vectors.dimensions <= MAX_VECTOR_DIMENSIONS:
        raise SearchSetupError(
            f"embedding dimensions {vectors.dimensions} are invalid: a vector field holds 2 to {MAX_VECTOR_DIMENSIONS}"
        )
    skill = _web_api_skills(rendered["skillset"])[0]
    skill["uri"] = f"{skill['uri']}?embedding=true"
    skill.setdefault("outputs", []).append({"name": "embedding", "targetName": "embedding"})
    if vectors.per_image:
        index = _image_index(f"{prefix}-image-index")
        rendered[IMAGE_INDEX] = index
        rendered["skillset"]["indexProjections"] = _image_projection(index["name"])
    else:
        index = rendered["index"]
    if any(f.get("name") == VECTOR_FIELD for f in index["fields"]):
        raise SearchSetupError(f"the index template already has a field {VECTOR_FIELD!r}")
    index["fields"].append(
        {
            "name": VECTOR_FIELD,
            "type": "Collection(Edm.Single)",
            "searchable": True,
            "filterable": False,
            "sortable": False,
            "facetable": False,
            "retrievable": False,
            "dimensions": vectors.dimensions,
            "vectorSearchProfile": VECTOR_PROFILE,
        }
    )
    parameters: dict[str, Any] = {"uri": f"{base}/api/vectorize", "httpMethod": "POST", "timeout": "PT60S"}
    if vectors.key is not None:
        parameters["httpHeaders"] = {"x-functions-key": vectors.key}
    if isinstance(auth, EntraAuth):
        parameters["authResourceId"] = auth.resource_id
    index["vectorSearch"] = {
        "algorithms": [
            {
                "name": VECTOR_ALGORITHM,
                "kind": "hnsw",
                "hnswParameters": {"metric": "cosine", "m": 4, "efConstruction": 400, "efSearch": 500},
            }
        ],
        "profiles": [{"name": VECTOR_PROFILE, "algorithm": VECTOR_ALGORITHM, "vectorizer": VECTORIZER}],
        "vectorizers": [{"name": VECTORIZER, "kind": "customWebApi", "customWebApiParameters": parameters}],
    }
    if not vectors.per_image:
        rendered["indexer"].setdefault("outputFieldMappings", []).append(
            {"sourceFieldName": "/document/normalized_images/0/embedding", "targetFieldName": VECTOR_FIELD}
        )


# The per-image index: its key (Edm.String, keyword analyzer, as index projections need), the parent document's
# key and name, and the skill's answer for the image.
_IMAGE_FIELDS: tuple[tuple[str, str, str | None], ...] = (
    ("parentId", "Edm.String", None),
    ("metadata_storage_name", "Edm.String", "/document/metadata_storage_name"),
    ("metadata_storage_path", "Edm.String", "/document/metadata_storage_path"),
    ("label", "Edm.String", f"{PER_IMAGE}/label"),
    ("confidence", "Edm.Double", f"{PER_IMAGE}/confidence"),
    ("labels", "Collection(Edm.String)", f"{PER_IMAGE}/labels"),
    ("modelVersion", "Edm.String", f"{PER_IMAGE}/modelVersion"),
    ("pageNumber", "Edm.Int32", f"{PER_IMAGE}/pageNumber"),
)


def _image_index(name: str) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {
            "name": "id",
            "type": "Edm.String",
            "key": True,
            "searchable": True,
            "filterable": True,
            "sortable": False,
            "facetable": False,
            "retrievable": True,
            "analyzer": "keyword",
        }
    ]
    for field_name, kind, _ in _IMAGE_FIELDS:
        text = kind in ("Edm.String", "Collection(Edm.String)") and field_name not in (
            "parentId",
            "metadata_storage_path",
        )
        fields.append(
            {
                "name": field_name,
                "type": kind,
                "searchable": text,
                "filterable": True,
                "sortable": kind in ("Edm.Double", "Edm.Int32") or field_name == "metadata_storage_name",
                "facetable": field_name in ("label", "labels", "modelVersion"),
                "retrievable": True,
            }
        )
    return {"name": name, "fields": fields}


def _image_projection(index_name: str) -> dict[str, Any]:
    mappings = [{"name": VECTOR_FIELD, "source": f"{PER_IMAGE}/embedding"}]
    mappings += [{"name": n, "source": source} for n, _, source in _IMAGE_FIELDS if source is not None]
    return {
        "selectors": [
            {
                "targetIndexName": index_name,
                "parentKeyFieldName": "parentId",
                "sourceContext": PER_IMAGE,
                "mappings": mappings,
            }
        ],
        "parameters": {"projectionMode": "includeIndexingParentDocuments"},
    }


def add_keyframes(rendered: dict[str, dict[str, Any]]) -> None:
    """Make `rendered` the keyframes' pipeline. Each keyframe blob carries the metadata `source_video` (the video's
    blob name, percent-encoded: metadata are ASCII HTTP headers) and `timestamp_ms` (9 digits); the blob indexer
    offers a blob's custom metadata as source fields by name, so field mappings put them into `sourceVideo`
    (Edm.String, decoded with the `urlDecode` mapping function; filterable, facetable) and `timestampMs`
    (Edm.Int64; filterable, sortable). The indexer reads only `.jpg` and `.jpeg` blobs (`indexedFileNameExtensions`):
    the per-video record `keyframes.json` is also marked `AzureSearch_Skip`."""
    fields = rendered["index"]["fields"]
    existing = {f["name"] for f in fields}
    for name in KEYFRAME_FIELDS:
        if name in existing:
            raise SearchSetupError(
                f"the index template already has a field {name!r}; rename it to add the keyframe fields"
            )
    fields.append(
        {
            "name": "sourceVideo",
            "type": "Edm.String",
            "searchable": False,
            "filterable": True,
            "sortable": False,
            "facetable": True,
            "retrievable": True,
        }
    )
    fields.append(
        {
            "name": "timestampMs",
            "type": "Edm.Int64",
            "searchable": False,
            "filterable": True,
            "sortable": True,
            "facetable": False,
            "retrievable": True,
        }
    )
    indexer = rendered["indexer"]
    indexer.setdefault("fieldMappings", []).extend(
        [
            {
                "sourceFieldName": "source_video",
                "targetFieldName": "sourceVideo",
                "mappingFunction": {"name": "urlDecode"},
            },
            {"sourceFieldName": "timestamp_ms", "targetFieldName": "timestampMs"},
        ]
    )
    configuration = indexer.setdefault("parameters", {}).setdefault("configuration", {})
    configuration["indexedFileNameExtensions"] = KEYFRAME_EXTENSIONS
    rendered["datasource"]["description"] = (
        "Video keyframes (python -m shared keyframes) to classify, read with the search service's managed identity."
    )


def ai_services_endpoint(url: str) -> str:
    """An AI Services resource's endpoint, https, without a trailing slash. SearchSetupError otherwise."""
    base = _base_url(url, "AI Services endpoint")
    if urllib.parse.urlsplit(base).path:
        raise SearchSetupError(
            f"AI Services endpoint {url!r} is invalid: give the resource's endpoint only, like "
            "https://<name>.cognitiveservices.azure.com"
        )
    return base


def visual_features(raw: str) -> tuple[str, ...]:
    """`tags,description` -> ("tags", "description"), each checked. SearchSetupError names the bad one."""
    features = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not features:
        raise SearchSetupError(f"visual features are empty: choose from {', '.join(VISUAL_FEATURES)}")
    for feature in features:
        if feature == "faces":
            raise SearchSetupError(
                "visual feature 'faces' is not offered: Image Analysis 3.2 retired the gender and limited the age "
                "of faces, and face rectangles have no searchable field; choose from " + ", ".join(VISUAL_FEATURES)
            )
        if feature not in _ANALYSIS_OUTPUTS:
            raise SearchSetupError(
                f"visual feature {feature!r} is unknown: choose from {', '.join(VISUAL_FEATURES)} (lowercase)"
            )
    return features


def _index_field(name: str, kind: str) -> dict[str, Any]:
    text = kind == "Collection(Edm.String)"
    keyword = name not in _SENTENCE_FIELDS
    return {
        "name": name,
        "type": kind,
        "searchable": text,
        "filterable": keyword,
        "sortable": False,
        "facetable": keyword,
        "retrievable": True,
    }


def _add_image_analysis(rendered: dict[str, dict[str, Any]], analysis: ImageAnalysis) -> None:
    features = visual_features(",".join(analysis.features))
    rendered["skillset"]["skills"].append(
        {
            "@odata.type": IMAGE_ANALYSIS_SKILL,
            "name": "analyze-images",
            "description": "Azure AI Vision's tags and captions beside the classifier's labels.",
            "context": PER_IMAGE,
            "defaultLanguageCode": "en",
            "visualFeatures": list(features),
            "inputs": [{"name": "image", "source": PER_IMAGE}],
            "outputs": [{"name": f, "targetName": _ANALYSIS_OUTPUTS[f][0]} for f in features],
        }
    )
    billing = analysis.billing
    if isinstance(billing, AIServicesIdentity):
        rendered["skillset"]["cognitiveServices"] = {
            "@odata.type": AI_SERVICES_BY_IDENTITY,
            "description": "Billed with the search service's managed identity (Cognitive Services User).",
            "subdomainUrl": ai_services_endpoint(billing.endpoint),
            "identity": None,
        }
    else:
        rendered["skillset"]["cognitiveServices"] = {
            "@odata.type": COGNITIVE_SERVICES_BY_KEY,
            "description": "Billed with a key of an AI Services resource in the search service's region.",
            "key": billing.key,
        }
    existing = {f["name"] for f in rendered["index"]["fields"]}
    for feature in features:
        for name, kind, path in _ANALYSIS_OUTPUTS[feature][1]:
            if name in existing:
                raise SearchSetupError(f"the index template already has a field {name!r}; rename it to add {feature}")
            rendered["index"]["fields"].append(_index_field(name, kind))
            rendered["indexer"].setdefault("outputFieldMappings", []).append(
                {"sourceFieldName": f"{PER_IMAGE}/{path}", "targetFieldName": name}
            )


def _nested_complex_collection(field: Mapping[str, Any]) -> str | None:
    for sub in field.get("fields") or []:
        if sub.get("type") == "Collection(Edm.ComplexType)":
            return str(sub.get("name"))
        found = _nested_complex_collection(sub)
        if found is not None:
            return f"{sub.get('name')}/{found}"
    return None


def _per_image_objects(skillset: Mapping[str, Any]) -> set[str]:
    """The enrichment nodes under each image that hold one object: the outputs of Shaper skills whose context is
    the image (a Shaper's `output` is always one object; a Web API skill's output may be a list)."""
    return {
        str(output.get("targetName") or output.get("name"))
        for skill in skillset.get("skills") or []
        if skill.get("@odata.type") == SHAPER_SKILL and skill.get("context") == PER_IMAGE
        for output in skill.get("outputs") or []
    }


def complex_elements_per_document(
    index: Mapping[str, Any], indexer: Mapping[str, Any], skillset: Mapping[str, Any] | None = None
) -> int:
    """The most elements one document can put in the index's complex collections, which Azure AI Search
    caps at MAX_COMPLEX_ELEMENTS_PER_DOCUMENT (3,000) per document.

    A Collection(Edm.ComplexType) field filled with one object per image (`/document/normalized_images/*/X`)
    costs MAX_IMAGES_PER_DOCUMENT (1,000); anything else in a complex collection (a nested complex
    collection, a source path through another `*`) has no bound. With `skillset`, X must also be the output
    of a Shaper skill at the image's context (one object), not a skill output that may be a list (a detection
    skill's `objects`: one element per object). Primitive collections (Collection(Edm.String), ...) do not
    count, inside a complex collection or not. Raises SearchSetupError when the total has no bound or
    exceeds the limit.
    """
    fields = {f.get("name"): f for f in index.get("fields", []) if isinstance(f, dict)}
    shaped = None if skillset is None else _per_image_objects(skillset)
    limit = MAX_COMPLEX_ELEMENTS_PER_DOCUMENT
    total = 0
    for mapping in indexer.get("outputFieldMappings") or []:
        name = mapping.get("targetFieldName")
        field_ = fields.get(name)
        if field_ is None or field_.get("type") != "Collection(Edm.ComplexType)":
            continue
        source = str(mapping.get("sourceFieldName", ""))
        nested = _nested_complex_collection(field_)
        if nested is not None:
            raise SearchSetupError(
                f"index field {name!r} has the complex collection {nested!r} inside it, so one image can add any "
                f"number of elements; Azure AI Search allows {limit:,} across all complex collections of a "
                "document: store such lists as string collections"
            )
        if not (source.startswith(PER_IMAGE + "/") and source.count("*") == 1):
            raise SearchSetupError(
                f"index field {name!r} is a complex collection filled from {source}, which has no bound per "
                f"document; Azure AI Search allows {limit:,} elements across all complex collections of a "
                f"document: fill it with one object per image ({PER_IMAGE}/NAME)"
            )
        if shaped is not None and source[len(PER_IMAGE) + 1 :] not in shaped:
            raise SearchSetupError(
                f"index field {name!r} is a complex collection filled from {source}, which no Shaper skill at "
                f"context {PER_IMAGE} outputs, so it may be a list (one element per item, no bound per document); "
                f"Azure AI Search allows {limit:,} elements across all complex collections of a document: fill it "
                f"with one object per image, a Shaper skill's output at context {PER_IMAGE}"
            )
        total += MAX_IMAGES_PER_DOCUMENT
    if total > limit:
        raise SearchSetupError(
            f"the index's complex collections can hold {total:,} elements per document ({MAX_IMAGES_PER_DOCUMENT:,} "
            f"images each); Azure AI Search allows {limit:,}: keep at most {limit // MAX_IMAGES_PER_DOCUMENT} "
            "per-image complex collections"
        )
    return total


def redacted(
    rendered: Mapping[str, dict[str, Any]],
    source: str = DEFAULT_FUNCTION_KEY_ENV,
    ai_services_key_source: str | None = None,
    vectorize_source: str = "VECTORIZE_FUNCTION_KEY",
) -> dict[str, Any]:
    """A copy safe to print: every skill header value (the function key) and the AI Services key replaced
    by where they come from."""
    shown = copy.deepcopy(dict(rendered))
    for skill in _web_api_skills(shown.get("skillset", {})):
        headers = skill.get("httpHeaders")
        if isinstance(headers, dict):
            skill["httpHeaders"] = {name: f"<redacted: ${source}>" for name in headers}
    vectorizers = [
        v
        for kind in ("index", IMAGE_INDEX)
        for v in shown.get(kind, {}).get("vectorSearch", {}).get("vectorizers") or []
    ]
    for vectorizer in vectorizers:
        headers = (vectorizer.get("customWebApiParameters") or {}).get("httpHeaders")
        if isinstance(headers, dict):
            vectorizer["customWebApiParameters"]["httpHeaders"] = {
                name: f"<redacted: ${vectorize_source}>" for name in headers
            }
    billing = shown.get("skillset", {}).get("cognitiveServices")
    if isinstance(billing, dict) and billing.get("key"):
        source_text = ai_services_key_source or "the AI Services key"
        billing["key"] = f"<redacted: {'$' if _ENV_NAME.fullmatch(source_text) else ''}{source_text}>"
    return shown
