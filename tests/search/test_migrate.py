"""migrate-skillset: the older PowerSkill's skillset (as its notebook wrote it, or as the service returns it)
becomes one that calls this function app; only the PowerSkill's Web API skill changes; the docs' commands
run as written against a stand-in search service on 127.0.0.1."""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from azure.search.documents.indexes import models as sm

from shared import cli
from shared.cli.search import main_migrate_skillset
from shared.search.apply import API_VERSION
from shared.search.migrate import migrate_skillset
from shared.search.templates import EntraAuth, FunctionKeyAuth, render
from tests.conftest import ROOT, SAMPLES
from tests.search.test_searchsetup import _at_path, run_skillset, type_problems, unknown_keys
from tests.searchstub import ETAG, SearchStub

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "powerskill"
NOTEBOOK = FIXTURES / "notebook-skillset.json"
PORTAL = FIXTURES / "portal-skillset.json"
FUNCTION = "https://func-abc123.azurewebsites.net"
FUNCTION_KEY = "fk-SECRET-function-key-value"
ADMIN_KEY = "ak-SECRET-admin-key-value"
AI_KEY = "ai-SECRET-services-key-value"
OLD_KEY = "old-powerskill-key-not-a-secret"
COGSVC_KEY = "cogsvc-key-not-a-secret"
STORAGE_ID = "/subscriptions/0000-1111/resourceGroups/rg-skill/providers/Microsoft.Storage/storageAccounts/stabc123"


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def web_api(skillset: dict[str, Any]) -> dict[str, Any]:
    (skill,) = [s for s in skillset["skills"] if s["@odata.type"] == "#Microsoft.Skills.Custom.WebApiSkill"]
    return skill


def test_the_notebooks_skillset_calls_the_function_app_and_nothing_else_changes() -> None:
    before = load(NOTEBOOK)
    after = migrate_skillset(before, FUNCTION, FunctionKeyAuth(FUNCTION_KEY))
    assert before == load(NOTEBOOK)  # the input is not modified
    old, new = web_api(before), web_api(after)
    assert new["uri"] == f"{FUNCTION}/api/classify"
    assert new["httpHeaders"] == {"x-functions-key": FUNCTION_KEY}
    assert (new["timeout"], new["batchSize"]) == ("PT230S", 8)
    changed = {"uri", "httpHeaders", "timeout", "batchSize"}
    assert {k: v for k, v in new.items() if k not in changed} == {k: v for k, v in old.items() if k not in changed}
    assert new["inputs"] == [{"name": "images", "source": "/document/normalized_images/*"}]
    assert new["outputs"] == [{"name": "amllabel"}]
    # The other skill and the billing are exactly as they were.
    assert after["skills"][0] == before["skills"][0]
    assert after["cognitiveServices"] == before["cognitiveServices"]
    assert {k for k in after if k != "skills"} == {k for k in before if k != "skills"}
    # What the service's models accept.
    parsed = sm.SearchIndexerSkillset(json.loads(json.dumps({"name": "aml-classifier-skillset", **after})))
    assert unknown_keys(parsed, {"name": "aml-classifier-skillset", **after}, "skillset") == []
    (skill,) = [s for s in parsed.skills if isinstance(s, sm.WebApiSkill)]
    assert skill.uri == f"{FUNCTION}/api/classify" and skill.batch_size == 8


def test_the_migrated_skill_still_fills_the_notebooks_amllabel_field(install_service: Any) -> None:
    """The notebook's indexer maps /document/normalized_images/*/amllabel to an `amllabel`
    Collection(Edm.String) field: run the migrated Web API skill through ClassifySkill.main and map it."""
    install_service()
    migrated = migrate_skillset(load(NOTEBOOK), FUNCTION, FunctionKeyAuth(FUNCTION_KEY))
    only_ours = {**migrated, "skills": [web_api(migrated)]}  # the built-in analysis cannot run here
    image = {"$type": "file", "data": base64.b64encode((SAMPLES / "coffee.png").read_bytes()).decode()}
    document: dict[str, Any] = {"normalized_images": [image, copy.deepcopy(image)]}
    run_skillset(only_ours, document)
    value, collection = _at_path(document, "/document/normalized_images/*/amllabel")
    field = {"name": "amllabel", "type": "Collection(Edm.String)"}
    assert collection and type_problems(value, field, "amllabel") == []
    assert value == ["espresso", "espresso"]


def test_a_portal_export_keeps_its_etag_and_names_and_drops_the_response_context() -> None:
    before = load(PORTAL)
    after = migrate_skillset(before, FUNCTION + "/", FunctionKeyAuth(FUNCTION_KEY))
    assert "@odata.context" not in after
    assert after["@odata.etag"] == before["@odata.etag"] and after["name"] == "aml-classifier-skillset"
    new = web_api(after)
    assert (new["name"], new["uri"], new["timeout"], new["batchSize"]) == (
        "#2",
        f"{FUNCTION}/api/classify",
        "PT230S",
        8,
    )
    assert new["authResourceId"] is None and new["degreeOfParallelism"] is None
    assert after["skills"][0] == before["skills"][0]
    parsed = sm.SearchIndexerSkillset(json.loads(json.dumps(after)))
    assert unknown_keys(parsed, after, "skillset") == []


def test_batch_size_within_the_recommendation_is_kept_and_other_headers_stay() -> None:
    skillset = load(NOTEBOOK)
    web_api(skillset)["batchSize"] = 12
    web_api(skillset)["httpHeaders"]["X-Trace"] = "on"
    after = web_api(migrate_skillset(skillset, FUNCTION, FunctionKeyAuth(FUNCTION_KEY)))
    assert after["batchSize"] == 12
    assert after["httpHeaders"] == {"X-Trace": "on", "x-functions-key": FUNCTION_KEY}


def test_entra_id_without_a_key_sends_no_key_header() -> None:
    after = web_api(migrate_skillset(load(NOTEBOOK), FUNCTION, EntraAuth("11111111-2222-3333-4444-555555555555")))
    assert "httpHeaders" not in after
    assert after["authResourceId"] == "11111111-2222-3333-4444-555555555555/.default"


def namespace(file: Path | str, **overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "file": str(file),
        "function_url": FUNCTION,
        "function_key_env": "SKILL_FUNCTION_KEY",
        "auth_resource_id": None,
        "name": None,
        "ai_services_key_env": None,
        "search_endpoint": None,
        "key_env": None,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def test_printing_redacts_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_migrate_skillset(namespace(NOTEBOOK), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for secret in (FUNCTION_KEY, OLD_KEY, COGSVC_KEY):
        assert secret not in out
    printed = json.loads(out)
    assert web_api(printed)["httpHeaders"] == {"x-functions-key": "<redacted: $SKILL_FUNCTION_KEY>"}
    assert printed["cognitiveServices"]["key"] == f"<redacted: as in {NOTEBOOK}>"


def test_the_command_line_entry_point(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_FUNCTION_KEY", FUNCTION_KEY)
    monkeypatch.setenv("MY_AI_KEY", AI_KEY)
    status = cli.main(
        [
            "migrate-skillset",
            str(PORTAL),
            "--function-url",
            FUNCTION,
            "--function-key-env",
            "MY_FUNCTION_KEY",
            "--ai-services-key-env",
            "MY_AI_KEY",
        ]
    )
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    printed = json.loads(out)
    assert web_api(printed)["httpHeaders"] == {"x-functions-key": "<redacted: $MY_FUNCTION_KEY>"}
    assert printed["cognitiveServices"]["key"] == "<redacted: $MY_AI_KEY>"
    assert FUNCTION_KEY not in out and AI_KEY not in out


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-16-le", b"")],
    ids=["utf-8-bom (Notepad)", "utf-16-le (PowerShell Out-File)", "utf-16-be", "utf-16-le without a BOM"],
)
def test_a_skillset_saved_with_a_byte_order_mark_or_as_utf16_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str, bom: bytes
) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(bom + NOTEBOOK.read_text(encoding="utf-8").encode(encoding))
    assert main_migrate_skillset(namespace(path), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert web_api(json.loads(out))["uri"] == f"{FUNCTION}/api/classify"


def test_the_issues_reproducer_with_a_bom_runs(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(
        b'\xef\xbb\xbf{"name":"s","skills":[{"@odata.type":"#Microsoft.Skills.Custom.WebApiSkill",'
        b'"uri":"https://x/api/extraction","outputs":[{"name":"amllabel"}]}]}'
    )
    done = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-m", "shared", "migrate-skillset", str(path), "--function-url", FUNCTION],
        cwd=ROOT,
        env={**os.environ, "SKILL_FUNCTION_KEY": "k"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert web_api(json.loads(done.stdout))["uri"] == f"{FUNCTION}/api/classify"


def test_bytes_that_are_no_unicode_text_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b'{"name": "\xff\xfe\xfd"}')
    assert main_migrate_skillset(namespace(path), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 1
    assert capsys.readouterr().err == (
        f"error: {path} is not a text file in UTF-8, UTF-16 or UTF-32 (expected a skillset's JSON)\n"
    )


def _search_setup_skillset(tmp_path: Path) -> Path:
    rendered = render(
        "https://s.search.windows.net", FUNCTION, auth=FunctionKeyAuth("k"), storage_resource_id=STORAGE_ID
    )
    path = tmp_path / "ours.json"
    path.write_text(json.dumps(rendered["skillset"]))
    return path


@pytest.mark.parametrize(
    ("content", "overrides", "env", "message"),
    [
        (
            "{not json",
            {},
            None,
            "{file} is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
        ('[{"skills": []}]', {}, None, '{file} is not a skillset: expected a JSON object with a "skills" list'),
        (
            '{"name": "x", "fields": []}',
            {},
            None,
            '{file} is not a skillset: expected a JSON object with a "skills" list',
        ),
        (
            json.dumps({"skills": [load(NOTEBOOK)["skills"][0]]}),
            {},
            None,
            "{file} has no skill of the AutoML Vision Classifier PowerSkill: expected a "
            "#Microsoft.Skills.Custom.WebApiSkill whose uri ends in /api/extraction or that outputs amllabel",
        ),
        (
            None,  # the file does not exist
            {},
            None,
            "cannot read {file} (No such file or directory)",
        ),
        (
            NOTEBOOK.read_text(),
            {},
            {},
            "environment variable SKILL_FUNCTION_KEY is not set: put ClassifySkill's function key there, for example "
            "with `az functionapp function keys list -g <group> -n <app> --function-name ClassifySkill`, or pass "
            "--auth-resource-id for Entra ID",
        ),
        (
            NOTEBOOK.read_text(),
            {"function_url": "http://dogs.example.net"},
            None,
            "function URL 'http://dogs.example.net' is invalid: expected an https:// URL",
        ),
        (
            NOTEBOOK.read_text(),
            {"search_endpoint": "https://s.search.windows.net"},
            None,
            '{file} has no "name" (the notebook put it in the URL): pass --name with the skillset\'s name',
        ),
        (
            PORTAL.read_text(),
            {"search_endpoint": "https://s.search.windows.net"},
            None,
            "{file} has no AI Services key in cognitiveServices (an export can leave it out) and writing it would stop "
            "the billing: pass --ai-services-key-env NAME with the key in that variable",
        ),
        (  # the preview fails where the write would, as search-setup --dry-run does
            PORTAL.read_text(),
            {},
            None,
            "{file} has no AI Services key in cognitiveServices (an export can leave it out) and writing it would stop "
            "the billing: pass --ai-services-key-env NAME with the key in that variable",
        ),
        (
            NOTEBOOK.read_text(),
            {"auth_resource_id": "api://1234"},
            None,
            "--auth-resource-id 'api://1234' is an application ID URI, not an application id: pass the app "
            "registration's application (client) id, a GUID like 00000000-0000-0000-0000-000000000000; the skill "
            "then asks for <appId>/.default (the api:// form is a common cause of 401s)",
        ),
    ],
)
def test_bad_input_is_one_error_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    overrides: dict[str, Any],
    env: dict[str, str] | None,
    message: str,
) -> None:
    path = tmp_path / "skillset.json"
    if content is not None:
        path.write_text(content)
    status = main_migrate_skillset(
        namespace(path, **overrides), {"SKILL_FUNCTION_KEY": FUNCTION_KEY} if env is None else env
    )
    assert status == 1
    assert capsys.readouterr() == ("", f"error: {message.format(file=path)}\n")


def test_search_setups_own_skillset_is_not_a_powerskill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _search_setup_skillset(tmp_path)
    assert main_migrate_skillset(namespace(path), {"SKILL_FUNCTION_KEY": FUNCTION_KEY}) == 1
    assert "has no skill of the AutoML Vision Classifier PowerSkill" in capsys.readouterr().err


# --- writing it, and the docs' commands as written ---------------------------------------------------------


@pytest.fixture
def search_service(search_stubs: Any) -> SearchStub:
    """The stand-in search service, taking ADMIN_KEY."""
    return search_stubs(key=ADMIN_KEY)


def test_writing_the_notebooks_skillset(search_service: SearchStub, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"SKILL_FUNCTION_KEY": FUNCTION_KEY, "SEARCH_ADMIN_KEY": ADMIN_KEY}
    args = namespace(NOTEBOOK, search_endpoint=search_service.endpoint, name="aml-classifier-skillset")
    assert main_migrate_skillset(args, env) == 0
    assert capsys.readouterr() == ("skillset aml-classifier-skillset: created\n", "")
    # azure-search-documents' create_or_update_skillset, on the SDK's API version, the JSON as migrated.
    (put,) = search_service.requests
    assert (put.method, put.path, put.query) == (
        "PUT",
        "/skillsets('aml-classifier-skillset')",
        {"api-version": API_VERSION},
    )
    expected = migrate_skillset(load(NOTEBOOK), FUNCTION, FunctionKeyAuth(FUNCTION_KEY))
    assert put.raw == json.dumps({**expected, "name": "aml-classifier-skillset"}).encode()
    # The service gets the real keys: the function key and the billing key the file had.
    written = put.body
    assert web_api(written)["httpHeaders"] == {"x-functions-key": FUNCTION_KEY}
    assert written["cognitiveServices"]["key"] == COGSVC_KEY


def test_docs_commands_run_as_written(search_service: SearchStub, tmp_path: Path) -> None:
    """Every `curl` and `.venv/bin/python -m shared` line of docs/migrating.md, run by bash with the variables
    the page exports set to a stand-in search service and test keys, and `azd` answering `env get-value`."""
    portal = {k: v for k, v in load(PORTAL).items() if not k.startswith("@odata.")}
    search_service.definitions["skillsets"]["aml-classifier-skillset"] = {"name": "aml-classifier-skillset", **portal}
    text = (ROOT / "docs" / "migrating.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    commands = [
        line.strip()
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith(("curl ", ".venv/bin/python -m shared "))
    ]
    assert len(commands) == 4
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    azd = bin_dir / "azd"
    azd.write_text('#!/bin/sh\n[ "$1 $2" = "env get-value" ] && printenv "$3"\n')
    azd.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "shared").symlink_to(ROOT / "shared")
    env = {
        **{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "NO_PROXY": "127.0.0.1,localhost",
        "SEARCH_ENDPOINT": search_service.endpoint,
        "FUNCTION_URL": FUNCTION,
        "SKILL_FUNCTION_KEY": FUNCTION_KEY,
        "SEARCH_ADMIN_KEY": ADMIN_KEY,
        "AI_SERVICES_KEY": AI_KEY,
        "STORAGE_ACCOUNT_ID": STORAGE_ID,
    }
    outputs = []
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], check=False, cwd=work, env=env, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, done.stderr) == (0, ""), command
        outputs.append(done.stdout)
        for secret in (FUNCTION_KEY, ADMIN_KEY, AI_KEY):
            assert secret not in done.stdout
    downloaded, printed, written, setup = outputs
    assert downloaded == "" and json.loads((work / "skillset.json").read_text())["@odata.etag"] == ETAG
    assert web_api(json.loads(printed))["uri"] == f"{FUNCTION}/api/classify"
    assert written == "skillset aml-classifier-skillset: updated\n"
    stored = search_service.definitions["skillsets"]["aml-classifier-skillset"]
    assert web_api(stored)["httpHeaders"] == {"x-functions-key": FUNCTION_KEY}
    assert stored["cognitiveServices"]["key"] == AI_KEY  # the export had none: it came from AI_SERVICES_KEY
    rendered = json.loads(setup)
    assert rendered["skillset"]["name"] == "dogs-skillset"
    assert rendered["skillset"]["skills"][-1]["visualFeatures"] == ["tags", "description", "categories", "brands"]
    assert rendered["indexer"]["parameters"]["configuration"]["imageAction"] == "generateNormalizedImagePerPage"
