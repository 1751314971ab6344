"""search-setup --segmentation: the detection index shape plus `polygons` (one JSON string per object) in each
image's element, valid for the SDK's models, within the complex-element bound, and filled through the real skill
serving an AutoML Mask R-CNN."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.bundle.loader import load_bundle
from shared.cli.search import main_search_setup
from shared.inference.factory import open_model
from shared.search.templates import (
    MAX_IMAGES_PER_DOCUMENT,
    SEGMENTATION_TEMPLATE_DIR,
    FunctionKeyAuth,
    complex_elements_per_document,
    render,
)
from tests.conftest import SAMPLES, preloaded_holder
from tests.search.test_detection_search import BOX, OBJECTS_SUBFIELDS, _mapped, run_detection_skillset
from tests.search.test_searchsetup import FUNCTION, FUNCTION_KEY, SEARCH, STORAGE_ID, normalized_image, sdk_objects

PARALLEL = ("labels", "scores", *BOX, "polygons")


def rendered() -> dict[str, dict[str, Any]]:
    return render(
        SEARCH, FUNCTION, auth=FunctionKeyAuth(FUNCTION_KEY), storage_resource_id=STORAGE_ID,
        batch_size=4, degree_of_parallelism=2, template_dir=SEGMENTATION_TEMPLATE_DIR,
    )  # fmt: skip


def test_segmentation_templates_deserialize_and_add_polygons_to_the_detection_shape() -> None:
    objects = sdk_objects(rendered())
    fields = {f.name: f for f in objects["index"].fields}
    sub = {f.name: f for f in fields["objects"].fields}
    assert list(sub) == [*OBJECTS_SUBFIELDS[:9], "polygons", *OBJECTS_SUBFIELDS[9:]]
    assert sub["polygons"].type == "Collection(Edm.String)" and not sub["polygons"].searchable
    assert {f.type for f in sub.values()} == {
        "Edm.String", "Edm.Double", "Edm.Int32", "Collection(Edm.String)", "Collection(Edm.Double)",
    }  # fmt: skip
    templates = rendered()
    assert complex_elements_per_document(templates["index"], templates["indexer"]) == MAX_IMAGES_PER_DOCUMENT


@pytest.mark.integration
def test_the_pipeline_through_the_real_skill_fills_polygons(
    install_service: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.detection_models import build_mask_rcnn

    folder = tmp_path_factory.mktemp("seg-search") / "run"
    build_mask_rcnn(folder, ["can", "carton"], height=128, width=160, detections=5, proposals=50)
    install_service(holder=preloaded_holder(open_model(load_bundle(folder), threads=2)))
    templates = rendered()
    photos = [Image.open(SAMPLES / "astronaut.png").convert("RGB"), Image.open(SAMPLES / "coffee.png").convert("RGB")]
    document = {"normalized_images": [normalized_image(photo, page) for page, photo in enumerate(photos, 1)]}
    run_detection_skillset(templates["skillset"], document)
    (mapping,) = [m for m in templates["indexer"]["outputFieldMappings"] if m["targetFieldName"] == "objects"]
    elements = _mapped(document, mapping["sourceFieldName"])
    images = document["normalized_images"]
    assert len(elements) == len(images)
    assert any(image["objects"] for image in images)
    for element, image in zip(elements, images, strict=True):
        rebuilt = [
            {"label": label, "score": score, "box": dict(zip(BOX, corners, strict=True)), "polygon": json.loads(p)}
            for label, score, *corners, p in zip(*(element[n] for n in PARALLEL), strict=True)
        ]
        assert rebuilt == image["objects"]


def test_cli_dry_run_with_segmentation(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = argparse.Namespace(
        search_endpoint=SEARCH, function_url=FUNCTION, storage_resource_id=STORAGE_ID, dry_run=True,
        segmentation=True, batch_size=None, degree_of_parallelism=None,
    )  # fmt: skip
    assert main_search_setup(args, env={"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 0
    printed = json.loads(capsys.readouterr().out)
    skill = printed["skillset"]["skills"][0]
    assert (skill["batchSize"], skill["degreeOfParallelism"]) == (4, 2)
    (objects,) = [f for f in printed["index"]["fields"] if f["name"] == "objects"]
    assert "polygons" in {f["name"] for f in objects["fields"]}
    args.detection = True
    assert main_search_setup(args, env={"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 1
    assert (
        capsys.readouterr().err == "error: --detection and --segmentation exclude each other: pick the model's task\n"
    )
