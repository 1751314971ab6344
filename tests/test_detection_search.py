"""search-setup --detection: the object detection templates (infra/search/detection/) are valid for the search
SDK's models and, run through the real skill serving a detection model, fill `objects` and `objectLabels`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import pytest
from PIL import Image

import ClassifySkill
from shared.bundle import load_bundle
from shared.detector import DetectionEngine
from shared.engine import Engine
from shared.searchsetup import DETECTION_TEMPLATE_DIR, FunctionKeyAuth, main_search_setup, render
from tests.conftest import SAMPLES, preloaded_holder
from tests.detection_models import build_yolo
from tests.test_searchsetup import (
    FUNCTION,
    FUNCTION_KEY,
    SEARCH,
    STORAGE_ID,
    normalized_image,
    sdk_objects,
    type_problems,
)

IMAGES = "/document/normalized_images/*"
OBJECTS = f"{IMAGES}/objects/*"


@pytest.fixture(scope="module")
def yolo_engine(tmp_path_factory: pytest.TempPathFactory) -> DetectionEngine:
    folder = tmp_path_factory.mktemp("yolo") / "run"
    build_yolo(folder, ["can", "carton", "milk_bottle"], img_size=160)
    engine = Engine(load_bundle(folder), threads=2)
    assert isinstance(engine, DetectionEngine)
    return engine


def rendered() -> dict[str, dict[str, Any]]:
    return render(
        SEARCH, FUNCTION, auth=FunctionKeyAuth(FUNCTION_KEY), storage_resource_id=STORAGE_ID,
        batch_size=4, degree_of_parallelism=2, template_dir=DETECTION_TEMPLATE_DIR,
    )  # fmt: skip


def test_detection_templates_deserialize_with_the_sdk_models() -> None:
    objects = sdk_objects(rendered())
    fields = {f.name: f for f in objects["index"].fields}
    assert fields["objectLabels"].type == "Collection(Edm.String)" and fields["objectLabels"].facetable
    assert [f.name for f in fields["objects"].fields] == ["label", "score", "box", "pageNumber", "modelVersion"]
    (skill,) = [s for s in objects["skillset"].skills if s.odata_type.endswith("WebApiSkill")]
    assert skill.uri == f"{FUNCTION}/api/classify?topK=20"
    assert (skill.batch_size, skill.degree_of_parallelism) == (4, 2)


def _resolve(source: str, image: dict[str, Any], obj: dict[str, Any] | None) -> Any:
    """A Shaper input at the object's level or at its image's (an ancestor of the skill's context)."""
    for prefix, node in ((OBJECTS + "/", obj), (IMAGES + "/", image)):
        if source.startswith(prefix) and node is not None:
            return node.get(source[len(prefix) :])
    raise AssertionError(f"cannot resolve {source}")


def run_detection_skillset(skillset: dict[str, Any], document: dict[str, Any]) -> None:
    """What the indexer does: the Web API skill per image (through ClassifySkill.main, with the query string
    of its uri), outputs written under each image, then the Shaper once per detected object."""
    web, shaper = skillset["skills"]
    assert web["context"] == IMAGES and shaper["context"] == OBJECTS
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
        for obj in image["objects"]:
            obj[output["targetName"]] = {inp["name"]: _resolve(inp["source"], image, obj) for inp in shaper["inputs"]}


def _mapped(document: dict[str, Any], source: str) -> list[Any]:
    if source == f"{IMAGES}/labels/*":
        return [label for image in document["normalized_images"] for label in image["labels"]]
    assert source.startswith(OBJECTS + "/")
    name = source[len(OBJECTS) + 1 :]
    return [obj[name] for image in document["normalized_images"] for obj in image["objects"]]


def test_the_pipeline_through_the_real_skill_fills_objects_and_object_labels(
    install_service: Any, yolo_engine: DetectionEngine
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
    objects = mapped["objects"]
    per_image = [len(image["objects"]) for image in document["normalized_images"]]
    assert len(objects) == sum(per_image) and max(per_image) <= 20 and per_image[0] > 0  # topK=20 from the uri
    assert {o["pageNumber"] for o in objects} == {p for p, n in zip((1, 2), per_image, strict=True) if n}
    assert all(o["modelVersion"] == yolo_engine.version and set(o["box"]) == {"topX", "topY", "bottomX", "bottomY"}
               for o in objects)  # fmt: skip
    assert set(mapped["objectLabels"]) == {o["label"] for o in objects}


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
    assert {f["name"] for f in printed["index"]["fields"]} >= {"objects", "objectLabels"}
