"""infra/search/*.json as search-setup renders them, checked against the azure-search-documents models
(tests/searchmodels.py): every key known, required fields present, enum values valid, JSON types right.
Deserializing alone would not do: the SDK's models accept unknown keys and missing required ones."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shared.search.templates import (
    DETECTION_TEMPLATE_DIR,
    AIServicesIdentity,
    AIServicesKey,
    EntraAuth,
    FunctionKeyAuth,
    ImageAnalysis,
    SearchSetupError,
    SkillAuth,
    Vectors,
    redacted,
    render,
)
from tests import searchmodels

SEARCH = "https://my-search.search.windows.net"
FUNCTION = "https://func-abc123.azurewebsites.net"
STORAGE_ID = "/subscriptions/0000-1111/resourceGroups/rg-skill/providers/Microsoft.Storage/storageAccounts/stabc123"
APP_ID = "11111111-2222-3333-4444-555555555555"

# The variants search-setup can render; add a row when render() grows an option that changes the objects.
VARIANTS: dict[str, dict[str, Any]] = {
    "function-key": {"auth": FunctionKeyAuth("k-123")},
    "entra-and-key": {"auth": EntraAuth(APP_ID, key="k-123")},
    "entra-only": {"auth": EntraAuth(APP_ID)},
    "small-batches": {"auth": FunctionKeyAuth("k-123"), "batch_size": 1, "degree_of_parallelism": 10},
    "other-names": {"auth": FunctionKeyAuth("k-123"), "container": "photos"},
    "per-page": {"auth": FunctionKeyAuth("k-123"), "per_page": True},
    "image-analysis-keyless": {
        "auth": FunctionKeyAuth("k-123"),
        "image_analysis": ImageAnalysis(AIServicesIdentity("https://my-ai.cognitiveservices.azure.com")),
    },
    "image-analysis-key-all-features": {
        "auth": EntraAuth(APP_ID),
        "per_page": True,
        "image_analysis": ImageAnalysis(
            AIServicesKey("ai-key", "AI_SERVICES_KEY"),
            features=("tags", "description", "categories", "brands", "objects", "adult"),
        ),
    },
    "enrichment-cache": {"auth": FunctionKeyAuth("k-123"), "enrichment_cache": STORAGE_ID},
    # search-setup --vectors (docs/vectors.md): the vector field, HNSW profile and customWebApi vectorizer.
    "vectors-function-key": {"auth": FunctionKeyAuth("k-123"), "vectors": Vectors(1280, key="v-123")},
    "vectors-entra": {"auth": EntraAuth(APP_ID), "vectors": Vectors(768)},
    # search-setup --detection: infra/search/detection/ (objects per image as parallel primitive collections).
    "detection": {"auth": FunctionKeyAuth("k-123"), "template_dir": DETECTION_TEMPLATE_DIR},
}
# Properties only preview API versions have, which the installed SDK's GA models (2026-04-01) do not know:
# kind -> property -> {key: JSON types}. The indexer's `cache` is SearchIndexerCache of the preview REST API
# (Microsoft Learn, "Configure an enrichment cache"; the preview JavaScript SDK's SearchIndexerCache interface:
# storageConnectionString, enableReprocessing, identity, and a read-only id).
PREVIEW_ONLY: dict[str, dict[str, dict[str, tuple[type, ...]]]] = {
    "indexer": {
        "cache": {
            "storageConnectionString": (str,),
            "enableReprocessing": (bool,),
            "identity": (dict, type(None)),
        }
    },
}


def rendered(auth: SkillAuth, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return render(SEARCH, FUNCTION, auth=auth, storage_resource_id=STORAGE_ID, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", sorted(searchmodels.MODELS))
def test_every_rendered_object_matches_the_rest_models(variant: str, kind: str) -> None:
    objects = rendered(**VARIANTS[variant])
    assert set(objects) == set(searchmodels.MODELS)
    body = dict(objects[kind])
    for name, shape in PREVIEW_ONLY.get(kind, {}).items():
        value = body.pop(name, None)
        if value is None:
            continue
        assert isinstance(value, dict) and set(value) <= set(shape), f"{kind}.{name}: {sorted(value)}"
        assert value.get("storageConnectionString"), f"{kind}.{name} needs storageConnectionString"
        for key, item in value.items():
            assert isinstance(item, shape[key]), f"{kind}.{name}.{key}: {item!r}"
    assert searchmodels.check(kind, body) == []


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", sorted(searchmodels.MODELS))
def test_the_sdk_sends_every_rendered_object_unchanged(variant: str, kind: str) -> None:
    """search-setup hands the rendered dicts to the SDK's create_or_update_* methods, which wrap a dict in
    the model (`Model(dict)` keeps it) and serialize it with `json.dumps(model, cls=SdkJSONEncoder,
    exclude_readonly=True)`: the bytes must be the rendered JSON's, nothing dropped, renamed or added."""
    from azure.search.documents._utils.model_base import SdkJSONEncoder
    from azure.search.documents.indexes import models

    body = rendered(**VARIANTS[variant])[kind]
    # The public classes, as the methods use them (the data source's is a patched subclass).
    model = getattr(models, searchmodels.MODELS[kind].__name__)(copy.deepcopy(body))
    assert json.dumps(model, cls=SdkJSONEncoder, exclude_readonly=True) == json.dumps(body)


def test_preview_only_properties_are_unknown_to_the_ga_models() -> None:
    """Guards PREVIEW_ONLY: once the SDK's GA models know `cache`, check it with them instead."""
    indexer = rendered(**VARIANTS["enrichment-cache"])["indexer"]
    assert indexer["cache"]["storageConnectionString"] == f"ResourceId={STORAGE_ID};"
    errors = searchmodels.check("indexer", indexer)
    assert len(errors) == 1 and errors[0].startswith("indexer.cache: unknown property of SearchIndexer"), errors


def test_the_models_the_checker_reads_are_not_empty() -> None:
    """Guards against a vacuous pass (e.g. a future SDK whose classes the checker no longer reads)."""
    index = searchmodels.fields(searchmodels.MODELS["index"])
    assert {name for name, (_, required, _) in index.items() if required} == {"name", "fields"}
    skillset = searchmodels.fields(searchmodels.MODELS["skillset"])
    assert {name for name, (_, required, _) in skillset.items() if required} == {"name", "skills"}
    from azure.search.documents.indexes.models._models import WebApiSkill

    web_api = searchmodels.fields(WebApiSkill)
    assert {"uri", "inputs", "outputs", "@odata.type", "httpHeaders", "authResourceId", "batchSize"} <= set(web_api)
    assert {name for name, (_, required, _) in web_api.items() if required} == {
        "@odata.type",
        "inputs",
        "outputs",
        "uri",
    }


def _web_api_skill(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (skill,) = [s for s in objects["skillset"]["skills"] if s["@odata.type"] == "#Microsoft.Skills.Custom.WebApiSkill"]
    return skill


def _unknown_key(objects: dict[str, dict[str, Any]]) -> str:
    _web_api_skill(objects)["batch_size"] = 8
    return "skillset"


def _miscased_key(objects: dict[str, dict[str, Any]]) -> str:
    _web_api_skill(objects)["BatchSize"] = _web_api_skill(objects).pop("batchSize")
    return "skillset"


def _missing_required(objects: dict[str, dict[str, Any]]) -> str:
    del _web_api_skill(objects)["uri"]
    return "skillset"


def _bad_field_type(objects: dict[str, dict[str, Any]]) -> str:
    objects["index"]["fields"][0]["type"] = "Edm.Text"
    return "index"


def _bad_image_action(objects: dict[str, dict[str, Any]]) -> str:
    objects["indexer"]["parameters"]["configuration"]["imageAction"] = "generateNormalizedImage"
    return "indexer"


def _bad_skill_type(objects: dict[str, dict[str, Any]]) -> str:
    _web_api_skill(objects)["@odata.type"] = "#Microsoft.Skills.Custom.WebApiSkil"
    return "skillset"


def _wrong_json_type(objects: dict[str, dict[str, Any]]) -> str:
    _web_api_skill(objects)["batchSize"] = "8"
    return "skillset"


def _bad_timeout(objects: dict[str, dict[str, Any]]) -> str:
    _web_api_skill(objects)["timeout"] = "230"
    return "skillset"


def _missing_nested_required(objects: dict[str, dict[str, Any]]) -> str:
    del objects["index"]["fields"][0]["name"]
    return "index"


@pytest.mark.parametrize(
    ("inject", "message"),
    [
        (_unknown_key, "skillset.skills[0].batch_size: unknown property of WebApiSkill (known: @odata.type, "),
        (
            _miscased_key,
            "skillset.skills[0].BatchSize: unknown property of WebApiSkill; the model spells it 'batchSize'",
        ),
        (_missing_required, "skillset.skills[0].uri: required property of WebApiSkill missing"),
        (_bad_field_type, "index.fields[0].type: 'Edm.Text' is not one of ['Edm.Boolean', "),
        (_bad_image_action, "indexer.parameters.configuration.imageAction: 'generateNormalizedImage' is not one of "),
        (_bad_skill_type, "skillset.skills[0].@odata.type: '#Microsoft.Skills.Custom.WebApiSkil' is not one of "),
        (_wrong_json_type, "skillset.skills[0].batchSize: '8' is not an integer"),
        (_bad_timeout, "skillset.skills[0].timeout: '230' is not an ISO 8601 duration such as 'PT230S'"),
        (_missing_nested_required, "index.fields[0].name: required property of SearchField missing"),
    ],
)
def test_the_check_reports_injected_defects(inject: Any, message: str) -> None:
    objects = copy.deepcopy(rendered(FunctionKeyAuth("k-123")))
    kind = inject(objects)
    errors = searchmodels.check(kind, objects[kind])
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_vectors_render_the_field_profile_and_vectorizer() -> None:
    objects = rendered(FunctionKeyAuth("k-123"), vectors=Vectors(1280, key="v-123"))
    index = objects["index"]
    assert index["fields"][-1] == {
        "name": "imageEmbedding",
        "type": "Collection(Edm.Single)",
        "searchable": True,
        "filterable": False,
        "sortable": False,
        "facetable": False,
        "retrievable": False,
        "dimensions": 1280,
        "vectorSearchProfile": "image-embedding-profile",
    }
    search = index["vectorSearch"]
    assert search["algorithms"] == [
        {
            "name": "image-embedding-hnsw",
            "kind": "hnsw",
            "hnswParameters": {"metric": "cosine", "m": 4, "efConstruction": 400, "efSearch": 500},
        }
    ]
    assert search["profiles"] == [
        {"name": "image-embedding-profile", "algorithm": "image-embedding-hnsw", "vectorizer": "image-vectorizer"}
    ]
    assert search["vectorizers"] == [
        {
            "name": "image-vectorizer",
            "kind": "customWebApi",
            "customWebApiParameters": {
                "uri": f"{FUNCTION}/api/vectorize",
                "httpMethod": "POST",
                "timeout": "PT60S",
                "httpHeaders": {"x-functions-key": "v-123"},
            },
        }
    ]
    skill = objects["skillset"]["skills"][0]
    assert skill["uri"] == f"{FUNCTION}/api/classify?embedding=true"
    assert {"name": "embedding", "targetName": "embedding"} in skill["outputs"]
    assert {"sourceFieldName": "/document/normalized_images/0/embedding", "targetFieldName": "imageEmbedding"} in (
        objects["indexer"]["outputFieldMappings"]
    )
    shown = redacted(objects, "SKILL_FUNCTION_KEY", None, "VECTORIZE_FUNCTION_KEY")
    assert "v-123" not in json.dumps(shown) and "k-123" not in json.dumps(shown)
    entra = rendered(EntraAuth(APP_ID), vectors=Vectors(768))["index"]["vectorSearch"]["vectorizers"][0]
    assert entra["customWebApiParameters"]["authResourceId"] == f"{APP_ID}/.default"
    assert "httpHeaders" not in entra["customWebApiParameters"]
    with pytest.raises(SearchSetupError, match="a vector field holds 2 to 4096"):
        rendered(FunctionKeyAuth("k-123"), vectors=Vectors(5000, key="v"))


def test_per_image_vectors_project_one_document_per_image_into_a_second_index() -> None:
    """Documents with many images (PDFs): the skillset's index projection (GA) writes one search document per
    image into `<prefix>-image-index`; the parents stay in the first index. Both indexes and the skillset
    match the SDK's models and go out unchanged."""
    from azure.search.documents._utils.model_base import SdkJSONEncoder
    from azure.search.documents.indexes import models

    objects = rendered(FunctionKeyAuth("k-123"), vectors=Vectors(1280, key="v-123", per_image=True))
    image_index = objects["imageindex"]
    assert image_index["name"] == "automl-images-image-index"
    assert not any(f["name"] == "imageEmbedding" for f in objects["index"]["fields"])
    key = image_index["fields"][0]
    assert (key["name"], key["key"], key["analyzer"]) == ("id", True, "keyword")
    assert image_index["vectorSearch"]["vectorizers"][0]["customWebApiParameters"]["uri"] == f"{FUNCTION}/api/vectorize"
    (selector,) = objects["skillset"]["indexProjections"]["selectors"]
    assert (selector["targetIndexName"], selector["parentKeyFieldName"], selector["sourceContext"]) == (
        "automl-images-image-index",
        "parentId",
        "/document/normalized_images/*",
    )
    assert {"name": "imageEmbedding", "source": "/document/normalized_images/*/embedding"} in selector["mappings"]
    fields = {f["name"] for f in image_index["fields"]}
    assert {m["name"] for m in selector["mappings"]} <= fields
    assert objects["skillset"]["indexProjections"]["parameters"] == {"projectionMode": "includeIndexingParentDocuments"}
    assert not any(m["targetFieldName"] == "imageEmbedding" for m in objects["indexer"]["outputFieldMappings"])
    for kind, body in (("index", image_index), ("index", objects["index"]), ("skillset", objects["skillset"])):
        assert searchmodels.check(kind, body) == []
        model = getattr(models, searchmodels.MODELS[kind].__name__)(copy.deepcopy(body))
        assert json.dumps(model, cls=SdkJSONEncoder, exclude_readonly=True) == json.dumps(body)
    assert "v-123" not in json.dumps(redacted(objects, "SKILL_FUNCTION_KEY", None, "VECTORIZE_FUNCTION_KEY"))
