"""search-setup --detection: the object detection templates (infra/search/detection/) are valid for the search
SDK's models, keep a document under Azure AI Search's 3,000 elements across all complex collections whatever
topK is, and, run through the real skill serving a detection model, fill `objects` (one element per image,
its detections as parallel lists), `objectLabels` and `objectCounts`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import pytest
from PIL import Image

import ClassifySkill
from shared.bundle.loader import load_bundle
from shared.cli.search import main_search_setup
from shared.inference.detection import DetectionModel
from shared.inference.factory import open_model
from shared.search.templates import (
    DETECTION_TEMPLATE_DIR,
    MAX_COMPLEX_ELEMENTS_PER_DOCUMENT,
    MAX_IMAGES_PER_DOCUMENT,
    FunctionKeyAuth,
    SearchSetupError,
    complex_elements_per_document,
    render,
)
from tests.conftest import ROOT, SAMPLES, preloaded_holder
from tests.detection_models import build_yolo
from tests.search.test_searchsetup import (
    FUNCTION,
    FUNCTION_KEY,
    SEARCH,
    STORAGE_ID,
    normalized_image,
    sdk_objects,
    type_problems,
)

IMAGES = "/document/normalized_images/*"
BOX = ("topX", "topY", "bottomX", "bottomY")
# The per-image element of `objects`: one entry per image, each object's fields as parallel lists.
PARALLEL = ("labels", "scores", *BOX)
OBJECTS_SUBFIELDS = [
    "label", "confidence", "count", "labels", "scores", *BOX, "objectCounts", "pageNumber", "modelVersion",
]  # fmt: skip


@pytest.fixture(scope="module")
def yolo_engine(tmp_path_factory: pytest.TempPathFactory) -> DetectionModel:
    folder = tmp_path_factory.mktemp("yolo") / "run"
    build_yolo(folder, ["can", "carton", "milk_bottle"], img_size=160)
    engine = open_model(load_bundle(folder), threads=2)
    assert isinstance(engine, DetectionModel)
    return engine


def rendered(template_dir: Path = DETECTION_TEMPLATE_DIR) -> dict[str, dict[str, Any]]:
    return render(
        SEARCH, FUNCTION, auth=FunctionKeyAuth(FUNCTION_KEY), storage_resource_id=STORAGE_ID,
        batch_size=4, degree_of_parallelism=2, template_dir=template_dir,
    )  # fmt: skip


def test_detection_templates_deserialize_with_the_sdk_models() -> None:
    objects = sdk_objects(rendered())
    fields = {f.name: f for f in objects["index"].fields}
    for name in ("objectLabels", "objectCounts"):
        assert fields[name].type == "Collection(Edm.String)" and fields[name].filterable and fields[name].facetable
    assert fields["objects"].type == "Collection(Edm.ComplexType)"
    sub = {f.name: f for f in fields["objects"].fields}
    assert list(sub) == OBJECTS_SUBFIELDS
    # Only primitive types inside the per-image element: nothing in it counts against the 3,000.
    assert {f.type for f in sub.values()} == {
        "Edm.String", "Edm.Double", "Edm.Int32", "Collection(Edm.String)", "Collection(Edm.Double)",
    }  # fmt: skip
    assert [sub[n].type for n in PARALLEL] == ["Collection(Edm.String)"] + ["Collection(Edm.Double)"] * 5
    assert sub["labels"].filterable and sub["labels"].facetable and sub["objectCounts"].filterable
    assert not any(f.sortable for f in sub.values())  # collections and subfields of a complex collection cannot sort
    (skill,) = [s for s in objects["skillset"].skills if s.odata_type.endswith("WebApiSkill")]
    assert skill.uri == f"{FUNCTION}/api/classify?topK=20"
    assert (skill.batch_size, skill.degree_of_parallelism) == (4, 2)


def test_a_detection_document_fills_at_most_one_complex_element_per_image() -> None:
    # `objects` has one element per image and nothing nested, so the extraction cap of 1,000 images per document
    # bounds it at 1,000 of the 3,000, whatever topK is; the per-object values sit in primitive collections.
    templates = rendered()
    assert complex_elements_per_document(templates["index"], templates["indexer"]) == MAX_IMAGES_PER_DOCUMENT
    assert MAX_IMAGES_PER_DOCUMENT < MAX_COMPLEX_ELEMENTS_PER_DOCUMENT


def old_per_object_shape(template_dir: Path, target: Path) -> Path:
    """The templates before: one `objects` element per detected object (a Shaper at .../objects/*)."""
    shutil.copytree(template_dir, target)
    index = json.loads((target / "index.json").read_text())
    (objects,) = [f for f in index["fields"] if f["name"] == "objects"]
    objects["fields"] = [
        {"name": "label", "type": "Edm.String"},
        {"name": "score", "type": "Edm.Double"},
        {"name": "box", "type": "Edm.ComplexType", "fields": [{"name": n, "type": "Edm.Double"} for n in BOX]},
        {"name": "pageNumber", "type": "Edm.Int32"},
        {"name": "modelVersion", "type": "Edm.String"},
    ]
    (target / "index.json").write_text(json.dumps(index))
    skillset = json.loads((target / "skillset.json").read_text())
    skillset["skills"][1] = {
        "@odata.type": "#Microsoft.Skills.Util.ShaperSkill",
        "context": f"{IMAGES}/objects/*",
        "inputs": [
            {"name": "label", "source": f"{IMAGES}/objects/*/label"},
            {"name": "score", "source": f"{IMAGES}/objects/*/score"},
            {"name": "box", "source": f"{IMAGES}/objects/*/box"},
            {"name": "pageNumber", "source": f"{IMAGES}/pageNumber"},
            {"name": "modelVersion", "source": f"{IMAGES}/modelVersion"},
        ],
        "outputs": [{"name": "output", "targetName": "object"}],
    }
    (target / "skillset.json").write_text(json.dumps(skillset))
    indexer = json.loads((target / "indexer.json").read_text())
    for mapping in indexer["outputFieldMappings"]:
        if mapping["targetFieldName"] == "objects":
            mapping["sourceFieldName"] = f"{IMAGES}/objects/*/object"
    (target / "indexer.json").write_text(json.dumps(indexer))
    return target


def test_the_old_per_object_shape_is_refused(tmp_path: Path) -> None:
    # 1,000 images x topK objects per document: no bound below 3,000, so render() refuses it.
    with pytest.raises(SearchSetupError) as caught:
        rendered(old_per_object_shape(DETECTION_TEMPLATE_DIR, tmp_path / "old"))
    assert str(caught.value) == (
        "index field 'objects' is a complex collection filled from /document/normalized_images/*/objects/*/object, "
        "which has no bound per document; Azure AI Search allows 3,000 elements across all complex collections of a "
        "document: fill it with one object per image (/document/normalized_images/*/NAME)"
    )


def test_the_skill_objects_list_mapped_straight_is_refused(tmp_path: Path) -> None:
    # `/document/normalized_images/*/objects` has one `*`, but the node is the skill's list of objects, not one
    # object: only a Shaper's output at the image's context is known to be one element per image.
    target = old_per_object_shape(DETECTION_TEMPLATE_DIR, tmp_path / "straight")
    indexer = json.loads((target / "indexer.json").read_text())
    for mapping in indexer["outputFieldMappings"]:
        if mapping["targetFieldName"] == "objects":
            mapping["sourceFieldName"] = f"{IMAGES}/objects"
    (target / "indexer.json").write_text(json.dumps(indexer))
    with pytest.raises(SearchSetupError) as caught:
        rendered(target)
    assert str(caught.value) == (
        "index field 'objects' is a complex collection filled from /document/normalized_images/*/objects, which no "
        "Shaper skill at context /document/normalized_images/* outputs, so it may be a list (one element per item, "
        "no bound per document); Azure AI Search allows 3,000 elements across all complex collections of a "
        "document: fill it with one object per image, a Shaper skill's output at context /document/normalized_images/*"
    )
    # The templates as shipped pass, and so does the classifier's `images` (a Shaper's `classification`).
    templates = rendered()
    assert complex_elements_per_document(templates["index"], templates["indexer"], templates["skillset"]) == 1000


def test_the_docs_describe_every_index_field() -> None:
    text = (ROOT / "docs" / "detection.md").read_text()
    section = text[text.index("## The search index") : text.index("## CLI and dev server")]
    for field in rendered()["index"]["fields"]:
        if field["name"].startswith("object"):
            assert f"`{field['name']}`" in section
            for sub in field.get("fields", []):
                assert f"`{sub['name']}`" in section, sub["name"]
    for query in ("objects/any(o: o/objectCounts/any(t: t eq 'forklift>=2'))", "Service limits in Azure AI Search"):
        assert query in section


def _select(node: Any, path: str) -> Any:
    """The enrichment tree's value at `path` below `node`: a `*` walks a list, and a path with a `*` yields one
    flat list of everything it reaches, in order (Microsoft Learn, "Shaper cognitive skill", scenario 2: an
    input through a deeper `*` than the context "flattens all chapter titles to create a single array")."""
    head, _, rest = path.partition("/")
    if head == "*":
        items = node if isinstance(node, list) else []
        if not rest:
            return list(items)
        found = [_select(item, rest) for item in items]
        return [v for f in found for v in (f if "*" in rest else [f])]
    child = node.get(head) if isinstance(node, dict) else None
    return _select(child, rest) if rest else child


def run_detection_skillset(skillset: dict[str, Any], document: dict[str, Any]) -> None:
    """What the indexer does: the Web API skill per image (through ClassifySkill.main, with the query string of
    its uri), outputs written under each image, then the Shaper once per image (its context)."""
    web, shaper = skillset["skills"]
    assert web["context"] == IMAGES and shaper["context"] == IMAGES
    images = document["normalized_images"]
    values = [{"recordId": str(i), "data": {"image": image}} for i, image in enumerate(images)]
    uri = urlsplit(web["uri"])
    response = ClassifySkill.main(
        func.HttpRequest(
            method="POST", url=uri.path, body=json.dumps({"values": values}).encode(), params=dict(parse_qsl(uri.query))
        )
    )
    assert response.status_code == 200
    answers = {a["recordId"]: a for a in json.loads(response.get_body())["values"]}
    for i, image in enumerate(images):
        assert answers[str(i)]["errors"] is None
        for output in web["outputs"]:
            image[output["targetName"]] = answers[str(i)]["data"][output["name"]]
    (output,) = shaper["outputs"]
    for image in images:
        shaped = {}
        for inp in shaper["inputs"]:
            assert inp["source"].startswith(IMAGES + "/"), inp
            shaped[inp["name"]] = _select(image, inp["source"][len(IMAGES) + 1 :])
        image[output["targetName"]] = shaped


def _mapped(document: dict[str, Any], source: str) -> Any:
    assert source.startswith("/document/")
    return _select(document, source[len("/document/") :])


def test_the_pipeline_through_the_real_skill_fills_one_element_per_image(
    install_service: Any, yolo_engine: DetectionModel
) -> None:
    install_service(holder=preloaded_holder(yolo_engine))
    templates = rendered()
    photos = [Image.open(SAMPLES / "astronaut.png").convert("RGB"), Image.open(SAMPLES / "coffee.png").convert("RGB")]
    document = {"normalized_images": [normalized_image(photo, page) for page, photo in enumerate(photos, 1)]}
    run_detection_skillset(templates["skillset"], document)

    fields = {f["name"]: f for f in templates["index"]["fields"]}
    mapped = {}
    for mapping in templates["indexer"]["outputFieldMappings"]:
        target = mapping["targetFieldName"]
        value = _mapped(document, mapping["sourceFieldName"])
        assert type_problems(value, fields[target], target) == []
        mapped[target] = value
    assert set(mapped) == {"objectLabels", "objectCounts", "objects"}

    images = document["normalized_images"]
    elements = mapped["objects"]
    assert len(elements) == len(images)  # one complex element per image, however many objects
    per_image = [len(image["objects"]) for image in images]
    assert per_image[0] > 1 and max(per_image) <= 20  # topK=20 from the uri
    for page, (element, image) in enumerate(zip(elements, images, strict=True), 1):
        assert list(element) == OBJECTS_SUBFIELDS
        answered = image["objects"]
        # The parallel lists, zipped back, are the skill's objects in its order (best first).
        rebuilt = [
            {"label": label, "score": score, "box": dict(zip(BOX, corners, strict=True))}
            for label, score, *corners in zip(*(element[n] for n in PARALLEL), strict=True)
        ]
        assert rebuilt == answered
        assert element["count"] == len(answered)
        assert (element["label"], element["confidence"]) == (
            (answered[0]["label"], answered[0]["score"]) if answered else (None, None)
        )
        assert element["objectCounts"] == image["objectCounts"]
        assert (element["pageNumber"], element["modelVersion"]) == (page, yolo_engine.version)
    # Document level: every image's labels and count tokens, for filters and facets.
    assert mapped["objectLabels"] == [label for image in images for label in image["labels"]]
    assert mapped["objectCounts"] == [token for image in images for token in image["objectCounts"]]

    # "Images with at least two <label>": objects/any(o: o/objectCounts/any(t: t eq '<label>>=2')).
    first = elements[0]
    label = max(set(first["labels"]), key=first["labels"].count)
    n = first["labels"].count(label)
    assert n >= 2, first["labels"]
    assert f"{label}>={n}" in first["objectCounts"] and f"{label}>={n + 1}" not in first["objectCounts"]
    for element in elements:
        counts = {name: element["labels"].count(name) for name in element["labels"]}  # labels in best-first order
        expected = [f"{name}>={i}" for name, total in counts.items() for i in range(1, total + 1)]
        assert element["objectCounts"] == expected


def test_cli_dry_run_with_detection(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = argparse.Namespace(
        search_endpoint=SEARCH,
        function_url=FUNCTION,
        storage_resource_id=STORAGE_ID,
        dry_run=True,
        detection=True,
        batch_size=None,
        degree_of_parallelism=None,
    )
    assert main_search_setup(args, env={"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 0
    printed = json.loads(capsys.readouterr().out)
    skill = printed["skillset"]["skills"][0]
    assert skill["uri"] == f"{FUNCTION}/api/classify?topK=20"
    assert (skill["batchSize"], skill["degreeOfParallelism"]) == (4, 2)
    assert FUNCTION_KEY not in json.dumps(printed)
    assert {f["name"] for f in printed["index"]["fields"]} >= {"objects", "objectLabels", "objectCounts"}
    assert complex_elements_per_document(printed["index"], printed["indexer"]) == MAX_IMAGES_PER_DOCUMENT
