"""search-setup: the rendered data source, index, skillset and indexer are what Azure AI Search and the
skill expect, and apply() writes them with PUT (against a recording HTTP server on 127.0.0.1 only)."""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
import pytest
from azure.core.credentials import AccessToken
from azure.search.documents._utils.model_base import Model
from azure.search.documents.indexes import models as sm
from PIL import Image

import ClassifySkill
from shared.cli.search import main_search_setup
from shared.inference.classification import Classification, record_data
from shared.search.apply import API_VERSION, KEYLESS_BILLING_API_VERSION, PREVIEW_API_VERSION, api_version_for, apply
from shared.search.templates import (
    KINDS,
    MAX_COMPLEX_ELEMENTS_PER_DOCUMENT,
    VISUAL_FEATURES,
    AIServicesIdentity,
    AIServicesKey,
    EntraAuth,
    FunctionKeyAuth,
    ImageAnalysis,
    ResourceNames,
    SearchSetupError,
    complex_elements_per_document,
    redacted,
    render,
)
from shared.skill.contract import INPUT_NAMES
from tests.conftest import SAMPLES, jpeg_bytes
from tests.searchstub import SearchStub

SEARCH = "https://my-search.search.windows.net"
FUNCTION = "https://func-abc123.azurewebsites.net"
STORAGE_ID = "/subscriptions/0000-1111/resourceGroups/rg-skill/providers/Microsoft.Storage/storageAccounts/stabc123"
FUNCTION_KEY = "fk-SECRET-function-key-value"
ADMIN_KEY = "ak-SECRET-admin-key-value"
APP_ID = "11111111-2222-3333-4444-555555555555"
MODELS = {
    "datasource": sm.SearchIndexerDataSourceConnection,
    "index": sm.SearchIndex,
    "skillset": sm.SearchIndexerSkillset,
    "indexer": sm.SearchIndexer,
}
AI_KEY = "ai-SECRET-services-key-value"
AI_ENDPOINT = "https://my-ai.cognitiveservices.azure.com"
# Per image, what the ImageAnalysisSkill's outputs hold (Microsoft Learn, "Image Analysis cognitive skill",
# skill outputs; Image Analysis 3.2's analyze response).
IMAGE_ANALYSIS_OUTPUT: dict[str, Any] = {
    "tags": [{"name": "cup", "confidence": 0.98}, {"name": "coffee", "confidence": 0.95, "hint": "drink"}],
    "description": {"tags": ["cup", "coffee"], "captions": [{"text": "a cup of coffee", "confidence": 0.61}]},
    "categories": [{"name": "food_", "score": 0.8}],
    "brands": [{"name": "Contoso", "confidence": 0.7, "rectangle": {"x": 1, "y": 2, "w": 3, "h": 4}}],
    "objects": [{"object": "cup", "confidence": 0.9, "rectangle": {"x": 1, "y": 2, "w": 3, "h": 4}}],
    "adult": {
        "isAdultContent": False,
        "isRacyContent": False,
        "isGoryContent": False,
        "adultScore": 0.01,
        "racyScore": 0.02,
        "goreScore": 0.0,
    },
}
# Free-form maps in the REST API (any key is valid).
FREE_FORM = (sm.WebApiHttpHeaders,)


def rendered_with_key(**kwargs: Any) -> dict[str, dict[str, Any]]:
    return render(SEARCH, FUNCTION, auth=FunctionKeyAuth(FUNCTION_KEY), storage_resource_id=STORAGE_ID, **kwargs)


def unknown_keys(model: Model, data: dict[str, Any], where: str) -> list[str]:
    """Keys the SDK model does not know (a misspelt property the service would reject), recursively."""
    if isinstance(model, FREE_FORM):
        return []
    fields = {f._rest_name: attr for attr, f in type(model)._attr_to_rest_field.items()}
    found = []
    for key, value in data.items():
        if key not in fields:
            found.append(f"{where}.{key} ({type(model).__name__})")
            continue
        typed = getattr(model, fields[key])
        if isinstance(typed, Model) and isinstance(value, dict):
            found += unknown_keys(typed, value, f"{where}.{key}")
        elif isinstance(typed, list) and isinstance(value, list):
            for i, (item, raw) in enumerate(zip(typed, value, strict=True)):
                if isinstance(item, Model) and isinstance(raw, dict):
                    found += unknown_keys(item, raw, f"{where}.{key}[{i}]")
    return found


def sdk_objects(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    objects = {kind: MODELS[kind](json.loads(json.dumps(rendered[kind]))) for kind in MODELS}
    for kind, obj in objects.items():
        assert unknown_keys(obj, rendered[kind], kind) == []
    return objects


# --- render ------------------------------------------------------------------------------------------------


def test_render_deserializes_with_the_sdk_models() -> None:
    rendered = rendered_with_key()
    assert list(rendered) == ["datasource", "index", "skillset", "indexer"]
    objects = sdk_objects(rendered)

    datasource = objects["datasource"]
    assert datasource.name == "automl-images-datasource"
    assert datasource.type == sm.SearchIndexerDataSourceType.AZURE_BLOB
    assert datasource.credentials.connection_string == f"ResourceId={STORAGE_ID};"
    assert datasource.container.name == "images"

    index = objects["index"]
    assert index.name == "automl-images-index"
    assert [f.name for f in index.fields if f.key] == ["id"]

    skillset = objects["skillset"]
    web_api = [s for s in skillset.skills if isinstance(s, sm.WebApiSkill)]
    assert len(web_api) == 1
    skill = web_api[0]
    assert skill.uri == f"{FUNCTION}/api/classify"
    assert skill.http_method == "POST"
    assert skill.timeout == datetime.timedelta(seconds=230)
    assert (skill.batch_size, skill.degree_of_parallelism) == (8, 4)
    assert skill.context == "/document/normalized_images/*"
    assert dict(skill.http_headers) == {"x-functions-key": FUNCTION_KEY}
    assert skill.auth_resource_id is None

    indexer = objects["indexer"]
    assert (indexer.data_source_name, indexer.target_index_name, indexer.skillset_name) == (
        "automl-images-datasource",
        "automl-images-index",
        "automl-images-skillset",
    )
    configuration = indexer.parameters.configuration
    assert configuration.image_action == sm.BlobIndexerImageAction.GENERATE_NORMALIZED_IMAGES
    assert configuration.data_to_extract == sm.BlobIndexerDataToExtract.CONTENT_AND_METADATA


def test_render_options_names_container_and_capacity() -> None:
    rendered = rendered_with_key(
        names=ResourceNames.from_prefix("pets"), container="pet-photos", batch_size=4, degree_of_parallelism=2
    )
    assert [rendered[k]["name"] for k in rendered] == ["pets-datasource", "pets-index", "pets-skillset", "pets-indexer"]
    assert rendered["datasource"]["container"]["name"] == "pet-photos"
    (skill,) = [s for s in rendered["skillset"]["skills"] if "uri" in s]
    assert (skill["batchSize"], skill["degreeOfParallelism"]) == (4, 2)
    # A URL that already ends in /api/classify, or has a trailing slash, gives the same skill URI.
    for url in (FUNCTION + "/", FUNCTION + "/api/classify", FUNCTION + "/api/classify/"):
        again = render(SEARCH, url, auth=FunctionKeyAuth("k"), storage_resource_id=STORAGE_ID)
        assert again["skillset"]["skills"][0]["uri"] == f"{FUNCTION}/api/classify"
    assert "{{" not in json.dumps(rendered)


def test_entra_id_option_also_sends_the_function_key_when_there_is_one() -> None:
    # ClassifySkill's authLevel is `function`: behind App Service authentication the host still checks keys.
    rendered = render(SEARCH, FUNCTION, auth=EntraAuth(APP_ID, key="k-123"), storage_resource_id=STORAGE_ID)
    skill = rendered["skillset"]["skills"][0]
    assert skill["authResourceId"] == f"{APP_ID}/.default"
    assert skill["httpHeaders"] == {"x-functions-key": "k-123"}


def test_entra_id_option_uses_auth_resource_id_and_no_key() -> None:
    rendered = render(SEARCH, FUNCTION, auth=EntraAuth(APP_ID), storage_resource_id=STORAGE_ID)
    skill = rendered["skillset"]["skills"][0]
    assert "httpHeaders" not in skill
    assert skill["authResourceId"] == f"{APP_ID}/.default"
    parsed = sdk_objects(rendered)["skillset"].skills[0]
    assert parsed.auth_resource_id == f"{APP_ID}/.default" and parsed.http_headers is None
    # The full value is taken as given.
    again = render(SEARCH, FUNCTION, auth=EntraAuth(f"api://{APP_ID}/.default"), storage_resource_id=STORAGE_ID)
    assert again["skillset"]["skills"][0]["authResourceId"] == f"api://{APP_ID}/.default"


def test_skill_inputs_and_outputs_are_what_classify_skill_accepts_and_returns() -> None:
    (skill,) = [s for s in rendered_with_key()["skillset"]["skills"] if s["@odata.type"].endswith("WebApiSkill")]
    assert [i["name"] for i in skill["inputs"]] == ["image"]
    assert {i["name"] for i in skill["inputs"]} <= set(INPUT_NAMES)
    assert skill["inputs"][0]["source"] == "/document/normalized_images/*"
    data = record_data(
        Classification(label="cat", confidence=0.9, labels=("cat",), predictions=(("cat", 0.9), ("dog", 0.1))), "v1"
    )
    outputs = [o["name"] for o in skill["outputs"]]
    assert outputs == ["label", "confidence", "labels", "modelVersion"]
    assert set(outputs) <= set(data)
    # amllabel duplicates label for indexes built for the older PowerSkill; the top-k predictions would cost
    # k complex elements per image (Azure AI Search allows 3,000 per document), so the index leaves them out.
    assert set(data) - set(outputs) == {"amllabel", "predictions"}


# --- the enrichment pipeline, simulated on the real skill -------------------------------------------------


def _relative(item: dict[str, Any], source: str, context: str) -> Any:
    assert source.startswith(context), f"{source} is outside the skill's context {context}"
    value: Any = item
    for part in [p for p in source[len(context) :].split("/") if p]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _at_path(document: dict[str, Any], path: str) -> tuple[Any, bool]:
    """Values at an enrichment path and whether it is a collection (it goes through '*')."""
    parts = [p for p in path.split("/") if p]
    assert parts[0] == "document"
    values: list[Any] = [document]
    for part in parts[1:]:
        if part == "*":
            values = [v for value in values for v in value]
        else:
            values = [value[part] for value in values if isinstance(value, dict) and value.get(part) is not None]
    return (values, True) if "*" in parts else (values[0] if values else None, False)


def _context_items(document: dict[str, Any], context: str) -> list[dict[str, Any]]:
    items, collection = _at_path(document, context)
    assert collection
    return items  # type: ignore[no-any-return]


def run_skillset(skillset: dict[str, Any], document: dict[str, Any]) -> None:
    """What the indexer does with the skillset, in order: call the Web API skill through ClassifySkill.main
    (the function the Functions host calls), write outputs by targetName, run the Shaper."""
    for skill in skillset["skills"]:
        items = _context_items(document, skill["context"])
        if skill["@odata.type"] == "#Microsoft.Skills.Custom.WebApiSkill":
            values = [
                {
                    "recordId": str(i),
                    "data": {inp["name"]: _relative(item, inp["source"], skill["context"]) for inp in skill["inputs"]},
                }
                for i, item in enumerate(items)
            ]
            path = urlsplit(skill["uri"]).path
            response = ClassifySkill.main(
                func.HttpRequest(method="POST", url=path, body=json.dumps({"values": values}).encode(), params={})
            )
            assert response.status_code == 200
            answers = {a["recordId"]: a for a in json.loads(response.get_body())["values"]}
            for i, item in enumerate(items):
                answer = answers[str(i)]
                assert answer["errors"] is None
                for output in skill["outputs"]:
                    assert output["name"] in answer["data"], f"the skill does not return {output['name']!r}"
                    item[output.get("targetName", output["name"])] = answer["data"][output["name"]]
        elif skill["@odata.type"] == "#Microsoft.Skills.Util.ShaperSkill":
            (output,) = skill["outputs"]
            for item in items:
                item[output["targetName"]] = {
                    inp["name"]: _relative(item, inp["source"], skill["context"]) for inp in skill["inputs"]
                }
        elif skill["@odata.type"] == "#Microsoft.Skills.Vision.ImageAnalysisSkill":
            # What the skill writes per image, shaped as its reference documents each output.
            targets = {o["name"]: o.get("targetName", o["name"]) for o in skill["outputs"]}
            for item in items:
                for name, target in targets.items():
                    item[target] = IMAGE_ANALYSIS_OUTPUT[name]
        else:
            pytest.fail(f"no simulation for {skill['@odata.type']}")


def type_problems(value: Any, field: dict[str, Any], where: str) -> list[str]:
    """Whether `value` can be indexed into `field` (its EDM type, subfields of complex types)."""
    kind = field["type"]
    if kind.startswith("Collection("):
        if not isinstance(value, list):
            return [f"{where}: {kind} needs a list, got {type(value).__name__}"]
        inner = {**field, "type": kind[len("Collection(") : -1]}
        return [p for i, v in enumerate(value) for p in type_problems(v, inner, f"{where}[{i}]")]
    if value is None:
        return []
    if kind == "Edm.ComplexType":
        if not isinstance(value, dict):
            return [f"{where}: complex type needs an object, got {type(value).__name__}"]
        subfields = {f["name"]: f for f in field["fields"]}
        found = [f"{where}.{k}: no such subfield in the index" for k in value if k not in subfields]
        return found + [
            p for k, v in value.items() if k in subfields for p in type_problems(v, subfields[k], f"{where}.{k}")
        ]
    accepted = {
        "Edm.String": (str,),
        "Edm.Double": (float, int),
        "Edm.Int32": (int,),
        "Edm.Int64": (int,),
        "Edm.Boolean": (bool,),
    }[kind]
    if (isinstance(value, bool) and kind != "Edm.Boolean") or not isinstance(value, accepted):
        return [f"{where}: {kind} cannot hold {value!r}"]
    return []


def normalized_image(image: Image.Image, page: int) -> dict[str, Any]:
    """The object Azure AI Search puts at /document/normalized_images/* (generateNormalizedImages)."""
    return {
        "$type": "file",
        "data": base64.b64encode(jpeg_bytes(image)).decode(),
        "width": image.width,
        "height": image.height,
        "originalWidth": image.width,
        "originalHeight": image.height,
        "rotationFromOriginal": 0,
        "contentOffset": 0,
        "pageNumber": page,
        "contentType": "image/jpeg",
        "url": None,
    }


def two_image_document() -> dict[str, Any]:
    """A document with two images, as a PDF with two pictures gives."""
    images = [Image.open(SAMPLES / "coffee.png"), Image.open(SAMPLES / "chelsea.png")]
    return {
        "metadata_storage_path": "https://stabc123.blob.core.windows.net/images/two.pdf",
        "normalized_images": [normalized_image(img.convert("RGB"), page) for page, img in enumerate(images, 1)],
    }


def index_document(rendered: dict[str, dict[str, Any]], document: dict[str, Any]) -> dict[str, Any]:
    """Run the skillset on `document`, then the indexer's output field mappings: the values each index field
    gets, each checked against the field's type."""
    run_skillset(rendered["skillset"], document)
    index_fields = {f["name"]: f for f in rendered["index"]["fields"]}
    mapped = {}
    for mapping in rendered["indexer"]["outputFieldMappings"]:
        target = mapping["targetFieldName"]
        assert target in index_fields, f"{target} is not an index field"
        value, collection = _at_path(document, mapping["sourceFieldName"])
        assert collection == index_fields[target]["type"].startswith("Collection(")
        assert type_problems(value, index_fields[target], target) == []
        mapped[target] = value
    for mapping in rendered["indexer"]["fieldMappings"]:
        assert mapping["targetFieldName"] in index_fields
    assert index_fields["id"]["key"] is True
    return mapped


def test_the_pipeline_through_the_real_skill_fills_the_index_fields(install_service: Any) -> None:
    install_service()
    mapped = index_document(rendered_with_key(), two_image_document())

    images_field = mapped["images"]
    assert [i["label"] for i in images_field] == ["espresso", "Egyptian cat"]
    assert [i["pageNumber"] for i in images_field] == [1, 2]
    assert all(set(i) == {"label", "confidence", "labels", "modelVersion", "pageNumber"} for i in images_field)
    assert mapped["labels"] == ["espresso", "Egyptian cat"]


def test_type_check_catches_a_mismatch() -> None:
    field = {
        "name": "images",
        "type": "Collection(Edm.ComplexType)",
        "fields": [{"name": "score", "type": "Edm.Double"}],
    }
    assert type_problems([{"score": "high"}], field, "images") == ["images[0].score: Edm.Double cannot hold 'high'"]
    assert type_problems([{"other": 1}], field, "images") == ["images[0].other: no such subfield in the index"]
    assert type_problems("cat", {"name": "labels", "type": "Collection(Edm.String)"}, "labels") == [
        "labels: Collection(Edm.String) needs a list, got str"
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"storage_resource_id": "stabc123"},
            "storage resource id 'stabc123' is invalid: expected /subscriptions/<id>/resourceGroups/<group>/providers/"
            "Microsoft.Storage/storageAccounts/<account> (azd: STORAGE_ACCOUNT_ID)",
        ),
        (
            {"function_url": "http://func.example.net"},
            "function URL 'http://func.example.net' is invalid: expected an https:// URL",
        ),
        (
            {"function_url": "https://func.example.net/api/classify?code=abc"},
            "function URL 'https://func.example.net/api/classify?code=abc' is invalid: give it without a query string",
        ),
        ({"search_endpoint": "my-search"}, "search endpoint 'my-search' is invalid: expected an https:// URL"),
        (
            {"container": "Images"},
            "container 'Images' is invalid: expected 3-63 lowercase letters, digits and hyphens",
        ),
        ({"batch_size": 0}, "batch size 0 is invalid: expected 1 to 1000 (4-16 for images)"),
        ({"degree_of_parallelism": 11}, "degree of parallelism 11 is invalid: expected 1 to 10"),
    ],
)
def test_render_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "search_endpoint": SEARCH,
        "function_url": FUNCTION,
        "auth": FunctionKeyAuth("k"),
        "storage_resource_id": STORAGE_ID,
        **kwargs,
    }
    with pytest.raises(SearchSetupError) as caught:
        render(arguments.pop("search_endpoint"), arguments.pop("function_url"), **arguments)
    assert str(caught.value) == message


def test_bad_prefix() -> None:
    with pytest.raises(SearchSetupError) as caught:
        ResourceNames.from_prefix("My_Index")
    assert str(caught.value) == (
        "name prefix 'My_Index' is invalid: use 1-100 lowercase letters, digits and dashes, starting and ending with "
        "a letter or digit"
    )


# --- the command ---------------------------------------------------------------------------------------------


def namespace(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "search_endpoint": SEARCH,
        "function_url": FUNCTION,
        "storage_resource_id": STORAGE_ID,
        "container": "images",
        "prefix": "automl-images",
        "auth_resource_id": None,
        "function_key_env": "SKILL_FUNCTION_KEY",
        "key_env": None,
        "batch_size": 8,
        "degree_of_parallelism": 4,
        "dry_run": False,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def test_dry_run_prints_the_json_and_never_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    status = main_search_setup(namespace(dry_run=True), {"SKILL_FUNCTION_KEY": FUNCTION_KEY})
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    printed = json.loads(out)
    assert FUNCTION_KEY not in out
    assert printed["skillset"]["skills"][0]["httpHeaders"] == {"x-functions-key": "<redacted: $SKILL_FUNCTION_KEY>"}
    assert printed == redacted(rendered_with_key())


def test_dry_run_with_entra_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_search_setup(namespace(dry_run=True, auth_resource_id=APP_ID), {}) == 0
    skill = json.loads(capsys.readouterr().out)["skillset"]["skills"][0]
    assert skill["authResourceId"] == f"{APP_ID}/.default" and "httpHeaders" not in skill


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "api://1234",
            "--auth-resource-id 'api://1234' is an application ID URI, not an application id: pass the app "
            "registration's application (client) id, a GUID like 00000000-0000-0000-0000-000000000000; the skill "
            "then asks for <appId>/.default (the api:// form is a common cause of 401s)",
        ),
        (
            f"api://{APP_ID}",
            f"--auth-resource-id 'api://{APP_ID}' is an application ID URI, not an application id: pass the app "
            "registration's application (client) id, a GUID like 00000000-0000-0000-0000-000000000000; the skill "
            "then asks for <appId>/.default (the api:// form is a common cause of 401s)",
        ),
        (
            "my-function-app",
            "--auth-resource-id 'my-function-app' is not an application id: expected the app registration's "
            "application (client) id, a GUID like 00000000-0000-0000-0000-000000000000 (or a full scope ending in "
            "/.default)",
        ),
    ],
)
def test_an_auth_resource_id_of_the_wrong_shape_is_one_line(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    assert main_search_setup(namespace(dry_run=True, auth_resource_id=value), {}) == 1
    assert capsys.readouterr() == ("", f"error: {message}\n")


TOKEN = "eyJ-not-a-real-token"
PUTS = [
    ("PUT", "/datasources('automl-images-datasource')"),
    ("PUT", "/indexes('automl-images-index')"),
    ("PUT", "/skillsets('automl-images-skillset')"),
    ("PUT", "/indexers('automl-images-indexer')"),
]


@pytest.fixture
def search_service(search_stubs: Any) -> SearchStub:
    """The stand-in search service, taking ADMIN_KEY or the token TOKEN."""
    return search_stubs(key=ADMIN_KEY, token=TOKEN)


def test_apply_puts_the_four_objects_in_order_with_the_named_key_env(
    search_service: SearchStub, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MY_SEARCH_KEY": ADMIN_KEY, "SKILL_FUNCTION_KEY": FUNCTION_KEY}
    args = namespace(search_endpoint=search_service.endpoint, key_env="MY_SEARCH_KEY")
    assert main_search_setup(args, env) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "datasource automl-images-datasource: created",
        "index automl-images-index: created",
        "skillset automl-images-skillset: created",
        "indexer automl-images-indexer: created",
    ]
    requests = search_service.requests
    # azure-search-documents' typed calls, in the SDK's URL form, on its own API version.
    assert search_service.calls() == PUTS
    assert {r.query["api-version"] for r in requests} == {API_VERSION}
    assert API_VERSION == "2026-04-01"
    assert all(r.headers["api-key"] == ADMIN_KEY and "Authorization" not in r.headers for r in requests)
    assert all(r.headers["Content-Type"] == "application/json" for r in requests)
    assert all(r.headers["Prefer"] == "return=representation" for r in requests)
    assert all(r.headers["User-Agent"].startswith("automl-image-skill-search-setup azsdk-python-search-documents/")
               for r in requests)  # fmt: skip
    # The SDK sends the rendered JSON unchanged, byte for byte.
    expected = render(
        search_service.endpoint, FUNCTION, auth=FunctionKeyAuth(FUNCTION_KEY), storage_resource_id=STORAGE_ID
    )
    assert [r.raw for r in requests] == [json.dumps(expected[k]).encode() for k in KINDS]
    # The service needs the real key; only printing hides it.
    assert requests[2].body["skills"][0]["httpHeaders"] == {"x-functions-key": FUNCTION_KEY}
    assert search_service.definitions["indexers"]["automl-images-indexer"] == expected["indexer"]

    # Running again updates in place.
    assert main_search_setup(args, env) == 0
    assert capsys.readouterr().out.splitlines() == [
        "datasource automl-images-datasource: updated",
        "index automl-images-index: updated",
        "skillset automl-images-skillset: updated",
        "indexer automl-images-indexer: updated",
    ]


def test_apply_defaults_to_search_admin_key(search_service: SearchStub) -> None:
    env = {"SEARCH_ADMIN_KEY": ADMIN_KEY, "SKILL_FUNCTION_KEY": FUNCTION_KEY}
    assert main_search_setup(namespace(search_endpoint=search_service.endpoint), env) == 0
    assert search_service.calls() == PUTS
    assert {r.headers["api-key"] for r in search_service.requests} == {ADMIN_KEY}


def test_apply_with_an_entra_id_credential_sends_a_bearer_token(search_service: SearchStub) -> None:
    class FakeCredential:
        """What the SDK's BearerTokenCredentialPolicy asks of a TokenCredential (DefaultAzureCredential)."""

        def __init__(self) -> None:
            self.scopes: list[tuple[str, ...]] = []

        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            self.scopes.append(scopes)
            return AccessToken(TOKEN, int(time.time()) + 3600)

    credential = FakeCredential()
    lines = apply(rendered_with_key(), search_service.endpoint, credential)
    assert len(lines) == 4
    # One token per client (SearchIndexClient for the index, SearchIndexerClient for the rest), for the search scope.
    assert credential.scopes == [("https://search.azure.com/.default",)] * 2
    assert {r.headers["Authorization"] for r in search_service.requests} == {f"Bearer {TOKEN}"}
    assert all("api-key" not in r.headers for r in search_service.requests)


def test_no_credential_is_one_line_naming_the_ways_to_sign_in(search_service: SearchStub) -> None:
    from azure.identity import CredentialUnavailableError

    class NoCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")

    with pytest.raises(SearchSetupError) as caught:
        apply(rendered_with_key(), search_service.endpoint, NoCredential())
    assert str(caught.value) == (
        "no Azure credential could get a token for Azure AI Search: sign in with `az login` (or run where a managed "
        "identity is available), or set SEARCH_ADMIN_KEY (or --key-env NAME) to an admin key"
    )
    assert search_service.requests == []


def test_the_credential_comes_from_the_one_place_that_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.credentials import AzureKeyCredential
    from azure.identity import DefaultAzureCredential

    from shared.cli.search import _search_credential

    key = _search_credential(None, {"SEARCH_ADMIN_KEY": ADMIN_KEY})
    assert isinstance(key, AzureKeyCredential) and key.key == ADMIN_KEY
    named = _search_credential("MY_SEARCH_KEY", {"MY_SEARCH_KEY": "other", "SEARCH_ADMIN_KEY": ADMIN_KEY})
    assert isinstance(named, AzureKeyCredential) and named.key == "other"
    built: list[Any] = []
    monkeypatch.setattr(DefaultAzureCredential, "__init__", lambda self, **kwargs: built.append(kwargs))
    assert isinstance(_search_credential(None, {"AZURE_CLIENT_ID": "client-1"}), DefaultAzureCredential)
    assert isinstance(_search_credential(None, {}), DefaultAzureCredential)
    assert built == [{"managed_identity_client_id": "client-1"}, {"managed_identity_client_id": None}]


def test_a_wrong_key_is_one_clear_line_without_the_key(
    search_service: SearchStub, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SEARCH_ADMIN_KEY": "a-query-key-not-an-admin-key", "SKILL_FUNCTION_KEY": FUNCTION_KEY}
    assert main_search_setup(namespace(search_endpoint=search_service.endpoint), env) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: search service {search_service.endpoint} refused the admin key (403 Forbidden) while writing the "
        "datasource 'automl-images-datasource': check that it is an admin key (not a query key) of this service\n"
    )
    assert "a-query-key" not in err and FUNCTION_KEY not in err
    assert len(search_service.requests) == 1


def test_a_rejected_object_relays_the_service_message(
    search_service: SearchStub, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "The request is invalid. Details: Cannot change field 'labels' type.\nSecond line."
    search_service.refuse("indexes", 400, message)
    env = {"SEARCH_ADMIN_KEY": ADMIN_KEY, "SKILL_FUNCTION_KEY": FUNCTION_KEY}
    assert main_search_setup(namespace(search_endpoint=search_service.endpoint), env) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: search service {search_service.endpoint} answered 400 Bad Request to the index "
        "'automl-images-index': The request is invalid. Details: Cannot change field 'labels' type. Second line.\n"
    )
    assert search_service.calls() == PUTS[:2]


def test_a_refused_preview_object_is_the_same_kind_of_line(search_service: SearchStub) -> None:
    search_service.refuse("skillsets", 403, "Forbidden")
    keyless = rendered_with_key(image_analysis=ImageAnalysis(AIServicesIdentity(AI_ENDPOINT)))
    with pytest.raises(SearchSetupError) as caught:
        apply(keyless, search_service.endpoint, ADMIN_KEY)
    assert str(caught.value) == (
        f"search service {search_service.endpoint} refused the admin key (403 Forbidden) while writing the skillset "
        "'automl-images-skillset': check that it is an admin key (not a query key) of this service"
    )


def test_unreachable_service_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    env = {"SEARCH_ADMIN_KEY": ADMIN_KEY, "SKILL_FUNCTION_KEY": FUNCTION_KEY}
    assert main_search_setup(namespace(search_endpoint=endpoint), env) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: search service {endpoint} is unreachable ([Errno 111] Connection refused)\n"
    assert "Traceback" not in err and ADMIN_KEY not in err


def test_no_credential_on_the_command_line_is_one_line(tmp_path: Any) -> None:
    """The command as a user runs it, with no admin key and (here) no Azure sign-in: one `error:` line, not
    DefaultAzureCredential's warning report first. Where a sign-in exists, the closed port gives the one line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SKILL_FUNCTION_KEY": FUNCTION_KEY, "NO_PROXY": "*"}
    argv = ["-m", "shared", "search-setup", "--search-endpoint", f"http://127.0.0.1:{port}", "--function-url",
            FUNCTION, "--storage-resource-id", STORAGE_ID]  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        (
            {"key_env": "MY_SEARCH_KEY"},
            {"SKILL_FUNCTION_KEY": FUNCTION_KEY},
            "error: environment variable MY_SEARCH_KEY is not set: put an admin key of the search service there, "
            "for example with `az search admin-key show -g <group> --service-name <service>`, or leave out "
            "--key-env to sign in with Entra ID\n",
        ),
        (
            {},
            {"SEARCH_ADMIN_KEY": ADMIN_KEY},
            "error: environment variable SKILL_FUNCTION_KEY is not set: put ClassifySkill's function key there, for "
            "example with `az functionapp function keys list -g <group> -n <app> --function-name ClassifySkill`, "
            "or pass --auth-resource-id for Entra ID\n",
        ),
    ],
)
def test_missing_key_variables_are_one_line_and_nothing_is_sent(
    search_service: SearchStub,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    env: dict[str, str],
    message: str,
) -> None:
    assert main_search_setup(namespace(search_endpoint=search_service.endpoint, **overrides), env) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", message)
    assert search_service.requests == []


# --- the 3,000 complex elements per document ----------------------------------------------------------------


def test_a_document_fills_at_most_1000_complex_elements_whatever_its_image_count() -> None:
    # Each image is one element of `images` and nothing nested: the extraction cap of 1,000 images per
    # document bounds it at 1,000 of the 3,000 Azure AI Search allows, leaving 2,000 for other collections.
    rendered = rendered_with_key()
    assert complex_elements_per_document(rendered["index"], rendered["indexer"]) == 1000
    assert MAX_COMPLEX_ELEMENTS_PER_DOCUMENT == 3000
    # Image analysis adds only simple collections, which do not count.
    analysis = ImageAnalysis(AIServicesIdentity(AI_ENDPOINT), features=VISUAL_FEATURES)
    rendered = rendered_with_key(image_analysis=analysis)
    assert complex_elements_per_document(rendered["index"], rendered["indexer"]) == 1000


def predictions_nested_in_images(index: dict[str, Any]) -> dict[str, Any]:
    """The shape before: the top-k predictions as a complex collection inside each image."""
    index = json.loads(json.dumps(index))
    (images,) = [f for f in index["fields"] if f["name"] == "images"]
    images["fields"].append(
        {
            "name": "predictions",
            "type": "Collection(Edm.ComplexType)",
            "fields": [{"name": "label", "type": "Edm.String"}, {"name": "score", "type": "Edm.Double"}],
        }
    )
    return index


def test_the_bound_refuses_nested_unbounded_and_too_many_complex_collections(tmp_path: Any) -> None:
    rendered = rendered_with_key()
    index, indexer = rendered["index"], rendered["indexer"]
    with pytest.raises(SearchSetupError) as caught:
        complex_elements_per_document(predictions_nested_in_images(index), indexer)
    assert str(caught.value) == (
        "index field 'images' has the complex collection 'predictions' inside it, so one image can add any number "
        "of elements; Azure AI Search allows 3,000 across all complex collections of a document: store such lists "
        "as string collections"
    )
    # A complex collection filled from a path through a second `*` (say, objects detected in each image).
    objects = {
        "name": "objects",
        "type": "Collection(Edm.ComplexType)",
        "fields": [{"name": "label", "type": "Edm.String"}],
    }
    wide = {**index, "fields": [*index["fields"], objects]}
    mapping = {"sourceFieldName": "/document/normalized_images/*/objects/*", "targetFieldName": "objects"}
    with pytest.raises(SearchSetupError) as caught:
        complex_elements_per_document(
            wide, {**indexer, "outputFieldMappings": [*indexer["outputFieldMappings"], mapping]}
        )
    assert str(caught.value) == (
        "index field 'objects' is a complex collection filled from /document/normalized_images/*/objects/*, which "
        "has no bound per document; Azure AI Search allows 3,000 elements across all complex collections of a "
        "document: fill it with one object per image (/document/normalized_images/*/NAME)"
    )
    # Four one-per-image collections would reach 4,000.
    extra = [{**objects, "name": f"c{i}"} for i in range(3)]
    mappings = [
        {"sourceFieldName": f"/document/normalized_images/*/c{i}", "targetFieldName": f"c{i}"} for i in range(3)
    ]
    four = (
        {**index, "fields": [*index["fields"], *extra]},
        {**indexer, "outputFieldMappings": [*indexer["outputFieldMappings"], *mappings]},
    )
    with pytest.raises(SearchSetupError) as caught:
        complex_elements_per_document(*four)
    assert str(caught.value) == (
        "the index's complex collections can hold 4,000 elements per document (1,000 images each); Azure AI Search "
        "allows 3,000: keep at most 3 per-image complex collections"
    )
    # render() runs the check on the templates, so an edit that breaks the bound fails at once.
    from shared.search.templates import TEMPLATE_DIR

    for name in ("datasource", "skillset", "indexer"):
        (tmp_path / f"{name}.json").write_text((TEMPLATE_DIR / f"{name}.json").read_text())
    template = json.loads((TEMPLATE_DIR / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps(predictions_nested_in_images(template)))
    with pytest.raises(SearchSetupError, match="has the complex collection 'predictions' inside it"):
        rendered_with_key(template_dir=tmp_path)


# --- --image-analysis and --per-page ---------------------------------------------------------------------


def test_without_the_options_nothing_changes() -> None:
    rendered = rendered_with_key()
    assert [s["@odata.type"] for s in rendered["skillset"]["skills"]] == [
        "#Microsoft.Skills.Custom.WebApiSkill",
        "#Microsoft.Skills.Util.ShaperSkill",
    ]
    assert "cognitiveServices" not in rendered["skillset"]
    assert rendered["indexer"]["parameters"]["configuration"]["imageAction"] == "generateNormalizedImages"
    assert {f["name"] for f in rendered["index"]["fields"]} == {
        "id", "content", "metadata_storage_name", "metadata_storage_path", "metadata_content_type",
        "metadata_storage_size", "metadata_storage_last_modified", "labels", "images",
    }  # fmt: skip


def test_per_page_renders_each_pdf_page_as_one_image() -> None:
    rendered = rendered_with_key(per_page=True)
    configuration = sdk_objects(rendered)["indexer"].parameters.configuration
    assert configuration.image_action == sm.BlobIndexerImageAction.GENERATE_NORMALIZED_IMAGE_PER_PAGE


def test_image_analysis_keyless_adds_the_skill_fields_and_mappings() -> None:
    rendered = rendered_with_key(image_analysis=ImageAnalysis(AIServicesIdentity(AI_ENDPOINT)))
    skillset = sdk_objects(rendered)["skillset"]
    (analysis,) = [s for s in skillset.skills if isinstance(s, sm.ImageAnalysisSkill)]
    assert analysis.visual_features == [sm.VisualFeature.TAGS, sm.VisualFeature.DESCRIPTION]
    assert analysis.context == "/document/normalized_images/*"
    assert [(i.name, i.source) for i in analysis.inputs] == [("image", "/document/normalized_images/*")]
    billing = skillset.cognitive_services_account
    assert isinstance(billing, sm.AIServicesAccountIdentity)
    assert billing.subdomain_url == AI_ENDPOINT and billing.identity is None
    assert rendered["skillset"]["cognitiveServices"]["identity"] is None  # system-assigned, as Learn says
    index_fields = {f["name"]: f for f in rendered["index"]["fields"]}
    assert index_fields["imageTags"]["type"] == "Collection(Edm.String)" and index_fields["imageTags"]["facetable"]
    assert index_fields["imageCaptions"]["searchable"] and not index_fields["imageCaptions"]["filterable"]
    assert rendered["indexer"]["outputFieldMappings"][-2:] == [
        {"sourceFieldName": "/document/normalized_images/*/visionTags/*/name", "targetFieldName": "imageTags"},
        {
            "sourceFieldName": "/document/normalized_images/*/visionDescription/captions/*/text",
            "targetFieldName": "imageCaptions",
        },
    ]


def test_image_analysis_with_a_key_and_every_feature(install_service: Any) -> None:
    install_service()
    analysis = ImageAnalysis(AIServicesKey(AI_KEY, "MY_AI_KEY"), features=VISUAL_FEATURES)
    rendered = rendered_with_key(image_analysis=analysis)
    billing = sdk_objects(rendered)["skillset"].cognitive_services_account
    assert isinstance(billing, sm.CognitiveServicesAccountKey) and billing.key == AI_KEY
    # The whole pipeline: the classifier through ClassifySkill.main, the analysis as documented, every mapped
    # value fits its field.
    mapped = index_document(rendered, two_image_document())
    assert mapped["imageTags"] == ["cup", "coffee", "cup", "coffee"]
    assert mapped["imageCaptions"] == ["a cup of coffee", "a cup of coffee"]
    assert mapped["imageCategories"] == ["food_", "food_"]
    assert mapped["imageBrands"] == ["Contoso", "Contoso"] and mapped["imageObjects"] == ["cup", "cup"]
    assert mapped["imageAdultContent"] == [False, False] and mapped["imageGoryContent"] == [False, False]
    assert [i["label"] for i in mapped["images"]] == ["espresso", "Egyptian cat"]
    # Printing hides both keys.
    shown = json.dumps(redacted(rendered, "SKILL_FUNCTION_KEY", "MY_AI_KEY"))
    assert AI_KEY not in shown and FUNCTION_KEY not in shown and "<redacted: $MY_AI_KEY>" in shown


def test_apply_writes_a_keyless_skillset_with_the_preview_api_version(search_service: SearchStub) -> None:
    keyless = rendered_with_key(image_analysis=ImageAnalysis(AIServicesIdentity(AI_ENDPOINT)))
    assert apply(keyless, search_service.endpoint, ADMIN_KEY)[2] == "skillset automl-images-skillset: created"
    assert search_service.calls() == PUTS
    versions = [r.query["api-version"] for r in search_service.requests]
    assert versions == [API_VERSION, API_VERSION, KEYLESS_BILLING_API_VERSION, API_VERSION]
    assert KEYLESS_BILLING_API_VERSION == "2025-11-01-preview"
    # The preview call goes through the same client: the same headers, the rendered JSON as it is.
    preview = search_service.requests[2]
    assert preview.raw == json.dumps(keyless["skillset"]).encode()
    assert preview.headers["api-key"] == ADMIN_KEY and preview.headers["Prefer"] == "return=representation"
    assert preview.headers["User-Agent"] == search_service.requests[1].headers["User-Agent"]
    assert apply(keyless, search_service.endpoint, ADMIN_KEY)[2] == "skillset automl-images-skillset: updated"
    search_service.requests.clear()
    apply(
        rendered_with_key(image_analysis=ImageAnalysis(AIServicesKey(AI_KEY, "K"))), search_service.endpoint, ADMIN_KEY
    )
    assert {r.query["api-version"] for r in search_service.requests} == {API_VERSION}
    assert search_service.requests[2].body["cognitiveServices"]["key"] == AI_KEY


# --- --enrichment-cache -------------------------------------------------------------------------------------

CACHE_ACCOUNT = "/subscriptions/0000-1111/resourceGroups/rg-cache/providers/Microsoft.Storage/storageAccounts/stcache1"


def test_enrichment_cache_adds_only_the_indexers_cache() -> None:
    plain = rendered_with_key()
    cached = rendered_with_key(enrichment_cache=CACHE_ACCOUNT)
    # Microsoft Learn, "Configure an enrichment cache": `cache` with `storageConnectionString` (here the
    # managed-identity form `ResourceId=<account id>;`) and `enableReprocessing`.
    assert cached["indexer"].pop("cache") == {
        "storageConnectionString": f"ResourceId={CACHE_ACCOUNT};",
        "enableReprocessing": True,
    }
    assert cached == plain
    assert api_version_for("indexer", rendered_with_key(enrichment_cache=CACHE_ACCOUNT)["indexer"]) == (
        PREVIEW_API_VERSION
    )
    assert api_version_for("indexer", plain["indexer"]) == API_VERSION
    with pytest.raises(SearchSetupError) as caught:
        rendered_with_key(enrichment_cache="stcache1")
    assert str(caught.value) == (
        "cache storage resource id 'stcache1' is invalid: expected /subscriptions/<id>/resourceGroups/<group>/"
        "providers/Microsoft.Storage/storageAccounts/<account> (azd: STORAGE_ACCOUNT_ID)"
    )


def test_the_sdks_typed_call_cannot_write_the_cache(search_service: SearchStub) -> None:
    """Why the indexer with a cache goes through send_preview(): the SDK's GA models have no `cache`, and its
    typed call sends its GA version, which the service refuses with Learn's "common error"."""
    from azure.core.credentials import AzureKeyCredential
    from azure.core.exceptions import HttpResponseError

    from shared.search import client as searchclient
    from tests import searchmodels
    from tests.searchstub import CACHE_ON_GA

    indexer = rendered_with_key(enrichment_cache=CACHE_ACCOUNT)["indexer"]
    assert searchmodels.check("indexer", indexer)[0].startswith("indexer.cache: unknown property of SearchIndexer")
    client = searchclient.indexer_client(search_service.endpoint, AzureKeyCredential(ADMIN_KEY))
    with pytest.raises(HttpResponseError) as caught:
        client.create_or_update_indexer(indexer)
    assert caught.value.status_code == 400 and CACHE_ON_GA in str(caught.value)
    assert search_service.requests[0].query["api-version"] == API_VERSION


def test_search_setup_with_enrichment_cache_writes_the_indexer_on_the_preview_version(
    search_service: SearchStub, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SEARCH_ADMIN_KEY": ADMIN_KEY, "SKILL_FUNCTION_KEY": FUNCTION_KEY}
    args = namespace(search_endpoint=search_service.endpoint, enrichment_cache=True)
    assert main_search_setup(args, env) == 0
    assert capsys.readouterr() == (
        "datasource automl-images-datasource: created\nindex automl-images-index: created\n"
        "skillset automl-images-skillset: created\nindexer automl-images-indexer: created\n",
        "",
    )
    assert search_service.calls() == PUTS
    versions = [r.query["api-version"] for r in search_service.requests]
    assert versions == [API_VERSION, API_VERSION, API_VERSION, PREVIEW_API_VERSION]
    assert PREVIEW_API_VERSION == "2025-11-01-preview"
    expected = render(
        search_service.endpoint,
        FUNCTION,
        auth=FunctionKeyAuth(FUNCTION_KEY),
        storage_resource_id=STORAGE_ID,
        enrichment_cache=STORAGE_ID,  # without --cache-storage-resource-id: the images' account
    )
    assert [r.raw for r in search_service.requests] == [json.dumps(expected[k]).encode() for k in KINDS]
    assert search_service.indexers["automl-images-indexer"].cache == {
        "storageConnectionString": f"ResourceId={STORAGE_ID};",
        "enableReprocessing": True,
    }
    # Again, on an indexer that exists: Learn says an existing indexer must be reset and run once to fill it.
    search_service.requests.clear()
    args = namespace(
        search_endpoint=search_service.endpoint, enrichment_cache=True, cache_storage_resource_id=CACHE_ACCOUNT
    )
    assert main_search_setup(args, env) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "indexer automl-images-indexer: updated",
        "indexer automl-images-indexer: the enrichment cache fills only on a full run: reset the indexer and run it "
        "once (Azure portal: Reset, then Run)",
    ]
    assert search_service.requests[-1].body["cache"]["storageConnectionString"] == f"ResourceId={CACHE_ACCOUNT};"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"cache_storage_resource_id": CACHE_ACCOUNT},
            "--cache-storage-resource-id only applies with --enrichment-cache",
        ),
        (
            {"enrichment_cache": True, "cache_storage_resource_id": "stcache1"},
            "cache storage resource id 'stcache1' is invalid: expected /subscriptions/<id>/resourceGroups/<group>/"
            "providers/Microsoft.Storage/storageAccounts/<account> (azd: STORAGE_ACCOUNT_ID)",
        ),
    ],
)
def test_bad_cache_options_are_one_line(
    capsys: pytest.CaptureFixture[str], overrides: dict[str, Any], message: str
) -> None:
    assert main_search_setup(namespace(dry_run=True, **overrides), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 1
    assert capsys.readouterr() == ("", f"error: {message}\n")


def test_enrichment_cache_on_the_command_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import cli

    monkeypatch.setenv("SKILL_FUNCTION_KEY", FUNCTION_KEY)
    argv = ["search-setup", "--search-endpoint", SEARCH, "--function-url", FUNCTION, "--storage-resource-id",
            STORAGE_ID, "--enrichment-cache", "--cache-storage-resource-id", CACHE_ACCOUNT, "--dry-run"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["indexer"]["cache"] == {
        "storageConnectionString": f"ResourceId={CACHE_ACCOUNT};",
        "enableReprocessing": True,
    }
    assert printed["datasource"]["credentials"]["connectionString"] == f"ResourceId={STORAGE_ID};"


def test_image_analysis_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"SKILL_FUNCTION_KEY": FUNCTION_KEY, "MY_AI_KEY": AI_KEY}
    args = namespace(
        dry_run=True,
        image_analysis=True,
        visual_features="tags, objects",
        ai_services_key_env="MY_AI_KEY",
        per_page=True,
    )
    assert main_search_setup(args, env) == 0
    out = capsys.readouterr().out
    assert AI_KEY not in out and FUNCTION_KEY not in out
    printed = json.loads(out)
    assert printed["skillset"]["cognitiveServices"] == {
        "@odata.type": "#Microsoft.Azure.Search.CognitiveServicesByKey",
        "description": "Billed with a key of an AI Services resource in the search service's region.",
        "key": "<redacted: $MY_AI_KEY>",
    }
    assert printed["skillset"]["skills"][-1]["visualFeatures"] == ["tags", "objects"]
    assert printed["indexer"]["parameters"]["configuration"]["imageAction"] == "generateNormalizedImagePerPage"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"image_analysis": True},
            "--image-analysis needs an AI Services resource to bill: --ai-services-endpoint "
            "https://<name>.cognitiveservices.azure.com (keyless, the search service's identity needs Cognitive "
            "Services User on it) or --ai-services-key-env NAME (a variable holding its key)",
        ),
        (
            {"image_analysis": True, "ai_services_endpoint": AI_ENDPOINT, "ai_services_key_env": "MY_AI_KEY"},
            "give either --ai-services-endpoint (keyless, with the search service's identity) or "
            "--ai-services-key-env (a key), not both",
        ),
        (
            {"ai_services_endpoint": AI_ENDPOINT},
            "--ai-services-endpoint, --ai-services-key-env and --visual-features only apply with --image-analysis",
        ),
        (
            {"image_analysis": True, "ai_services_endpoint": "http://my-ai.cognitiveservices.azure.com"},
            "AI Services endpoint 'http://my-ai.cognitiveservices.azure.com' is invalid: expected an https:// URL",
        ),
        (
            {"image_analysis": True, "ai_services_endpoint": AI_ENDPOINT + "/vision/v3.2/analyze"},
            f"AI Services endpoint '{AI_ENDPOINT}/vision/v3.2/analyze' is invalid: give the resource's endpoint only, "
            "like https://<name>.cognitiveservices.azure.com",
        ),
        (
            {"image_analysis": True, "ai_services_endpoint": AI_ENDPOINT, "visual_features": "tags,Color"},
            "visual feature 'Color' is unknown: choose from adult, brands, categories, description, objects, tags "
            "(lowercase)",
        ),
        (
            {"image_analysis": True, "ai_services_endpoint": AI_ENDPOINT, "visual_features": "faces"},
            "visual feature 'faces' is not offered: Image Analysis 3.2 retired the gender and limited the age of "
            "faces, and face rectangles have no searchable field; choose from adult, brands, categories, "
            "description, objects, tags",
        ),
        (
            {"image_analysis": True, "ai_services_endpoint": AI_ENDPOINT, "visual_features": " , "},
            "visual features are empty: choose from adult, brands, categories, description, objects, tags",
        ),
    ],
)
def test_bad_image_analysis_options_are_one_line(
    capsys: pytest.CaptureFixture[str], overrides: dict[str, Any], message: str
) -> None:
    assert main_search_setup(namespace(dry_run=True, **overrides), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 1
    assert capsys.readouterr() == ("", f"error: {message}\n")


# --- the dry run fails where the real run would (issue 13, finding 11) ------------------------------------


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        (
            {},
            {"SEARCH_ADMIN_KEY": ADMIN_KEY},
            "error: environment variable SKILL_FUNCTION_KEY is not set: put ClassifySkill's function key there, for "
            "example with `az functionapp function keys list -g <group> -n <app> --function-name ClassifySkill`, "
            "or pass --auth-resource-id for Entra ID\n",
        ),
        (
            {"key_env": "MY_SEARCH_KEY"},
            {"SKILL_FUNCTION_KEY": FUNCTION_KEY},
            "error: environment variable MY_SEARCH_KEY is not set: put an admin key of the search service there, "
            "for example with `az search admin-key show -g <group> --service-name <service>`, or leave out "
            "--key-env to sign in with Entra ID\n",
        ),
        (
            {"image_analysis": True, "ai_services_key_env": "MY_AI_KEY"},
            {"SKILL_FUNCTION_KEY": FUNCTION_KEY, "SEARCH_ADMIN_KEY": ADMIN_KEY},
            "error: environment variable MY_AI_KEY is not set: put a key of the AI Services resource (in the search "
            "service's region) there, for example with `az cognitiveservices account keys list -g <group> -n "
            "<resource> --query key1 -o tsv`, or use --ai-services-endpoint for keyless billing\n",
        ),
    ],
)
def test_dry_run_reports_the_same_missing_input_as_the_real_run(
    search_service: SearchStub,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    env: dict[str, str],
    message: str,
) -> None:
    for dry_run in (False, True):
        args = namespace(search_endpoint=search_service.endpoint, dry_run=dry_run, **overrides)
        assert main_search_setup(args, env) == 1
        assert capsys.readouterr() == ("", message), f"dry_run={dry_run}"
    assert search_service.requests == []


def test_rendered_enum_values_are_the_sdks() -> None:
    # The SDK models accept any string for an enum; check the values against the enums themselves.
    analysis = ImageAnalysis(AIServicesIdentity(AI_ENDPOINT), features=VISUAL_FEATURES)
    for per_page in (False, True):
        rendered = rendered_with_key(image_analysis=analysis, per_page=per_page)
        (skill,) = [s for s in rendered["skillset"]["skills"] if s["@odata.type"].endswith("ImageAnalysisSkill")]
        assert set(skill["visualFeatures"]) <= {v.value for v in sm.VisualFeature}
        assert skill["defaultLanguageCode"] in {v.value for v in sm.ImageAnalysisSkillLanguage}
        action = rendered["indexer"]["parameters"]["configuration"]["imageAction"]
        assert action in {v.value for v in sm.BlobIndexerImageAction}
        for field in rendered["index"]["fields"]:
            inner = field["type"].removeprefix("Collection(").removesuffix(")")
            assert inner in {v.value for v in sm.SearchFieldDataType}, field["name"]


def test_vectors_per_image_writes_the_image_index_before_the_skillset(
    search_service: SearchStub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--vectors per-image: the second index (the index projection's target) is written after the first and before
    the skillset that names it; the width is the current model's (here the bundled sample: 1280)."""
    for name in ("MODEL_BLOB_CONNECTION_STRING", "MODEL_BLOB_ACCOUNT_URL", "AZUREML_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    env = {"MY_SEARCH_KEY": ADMIN_KEY, "SKILL_FUNCTION_KEY": FUNCTION_KEY, "VECTORIZE_FUNCTION_KEY": "vec-key"}
    args = namespace(search_endpoint=search_service.endpoint, key_env="MY_SEARCH_KEY", vectors="per-image")
    assert main_search_setup(args, env) == 0
    assert capsys.readouterr().out.splitlines() == [
        "datasource automl-images-datasource: created",
        "index automl-images-index: created",
        "index automl-images-image-index: created",
        "skillset automl-images-skillset: created",
        "indexer automl-images-indexer: created",
    ]
    image_index = search_service.definitions["indexes"]["automl-images-image-index"]
    vector = next(f for f in image_index["fields"] if f["name"] == "imageEmbedding")
    assert vector["dimensions"] == 1280
    vectorizer = image_index["vectorSearch"]["vectorizers"][0]["customWebApiParameters"]
    assert vectorizer["httpHeaders"] == {"x-functions-key": "vec-key"}
    skillset = search_service.definitions["skillsets"]["automl-images-skillset"]
    assert skillset["indexProjections"]["selectors"][0]["targetIndexName"] == "automl-images-image-index"


def test_vectors_need_the_vectorizers_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_search_setup(namespace(dry_run=True, vectors="document"), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 1
    assert capsys.readouterr().err == (
        "error: environment variable VECTORIZE_FUNCTION_KEY is not set: put VectorizeImage's function key there, for "
        "example with `az functionapp function keys list -g <group> -n <app> --function-name VectorizeImage`, or "
        "pass --auth-resource-id for Entra ID\n"
    )
    args = namespace(dry_run=True, vectors="document", dimensions=7, detection=True)
    assert main_search_setup(args, {"SKILL_FUNCTION_KEY": FUNCTION_KEY, "VECTORIZE_FUNCTION_KEY": "v"}) == 1
    assert capsys.readouterr().err == (
        "error: --vectors needs a classification model: detection models have no embedding\n"
    )
