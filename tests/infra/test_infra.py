"""infra/: every Bicep file parses (tree-sitter-bicep; no Bicep compiler can run here), holds the resources
the deployment needs, and sets every setting the app reads; azure.yaml, main.parameters.json and the
Dockerfile agree with it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tree_sitter_bicep
from tree_sitter import Language, Node, Parser

from shared.core.settings import LEGACY_ALIASES, Settings, setting_names
from tests import bicepeval
from tests.conftest import ROOT

INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
PARSER = Parser(Language(tree_sitter_bicep.language()))

STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
# Microsoft Learn, "Azure built-in roles" (AI + machine learning): role definition ids.
SEARCH_SERVICE_CONTRIBUTOR = "7ca78c08-252a-4471-8644-bb5ff32d4ba0"
SEARCH_INDEX_DATA_READER = "1407120a-92aa-4202-b7e9-c0e197c71c8f"
ROLE_NAMES = {
    STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    STORAGE_BLOB_DATA_READER: "Storage Blob Data Reader",
    STORAGE_QUEUE_DATA_CONTRIBUTOR: "Storage Queue Data Contributor",
    STORAGE_TABLE_DATA_CONTRIBUTOR: "Storage Table Data Contributor",
    SEARCH_SERVICE_CONTRIBUTOR: "Search Service Contributor",
    SEARCH_INDEX_DATA_READER: "Search Index Data Reader",
}
# Settings the Functions host or platform reads, not shared/core/settings.py.
HOST_SETTINGS = {
    "AzureWebJobs.RefreshModel.Disabled",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}


def settings_the_app_reads() -> set[str]:
    return set(setting_names()) - set(LEGACY_ALIASES)


# --- a small reader of the Bicep syntax tree -------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    """A Bicep expression that is not a literal (a reference, a call, an interpolated string ...)."""

    text: str


@dataclass
class Resource:
    path: str  # symbolic name, nested ones joined with '::' as Bicep writes them
    type: str  # without the API version; nested types are completed with the parent's
    existing: bool
    conditional: bool
    body: dict[str, Any]


@dataclass
class BicepFile:
    path: Path
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {type, default?, allowed?}
    variables: dict[str, Any] = field(default_factory=dict)
    resources: list[Resource] = field(default_factory=list)
    modules: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # name -> (file, body)
    outputs: set[str] = field(default_factory=set)


def _text(node: Node) -> str:
    return (node.text or b"").decode()


def bicep_value(node: Node) -> Any:
    """Literals as Python values (str, int, bool, None, dict, list); anything else as Expr."""
    if node.type == "string":
        if any(c.type == "interpolation" for c in node.children):
            return Expr(_text(node))
        parts = []
        for child in node.children:
            if child.type == "string_content":
                parts.append(_text(child))
            elif child.type == "escape_sequence":
                parts.append(_text(child)[1:])
        return "".join(parts)
    if node.type == "number":
        return int(_text(node))
    if node.type == "boolean":
        return _text(node) == "true"
    if node.type == "null":
        return None
    if node.type == "object":
        result: dict[str, Any] = {}
        for prop in node.named_children:
            if prop.type != "object_property" or prop.named_children[0].type == "resource_declaration":
                continue
            key_node, value_node = prop.named_children[0], prop.named_children[-1]
            key = bicep_value(key_node) if key_node.type == "string" else _text(key_node)
            result[str(key)] = bicep_value(value_node)
        return result
    if node.type == "array":
        return [bicep_value(child) for child in node.named_children]
    return Expr(_text(node))


def _body(declaration: Node) -> tuple[dict[str, Any], bool]:
    for child in declaration.named_children:
        if child.type == "object":
            return bicep_value(child), False
        if child.type == "if_statement":
            return bicep_value(next(c for c in child.named_children if c.type == "object")), True
    return {}, False


def _resources(declaration: Node, parent_path: str, parent_type: str, out: list[Resource]) -> None:
    name = _text(declaration.named_children[0])
    type_string = bicep_value(declaration.named_children[1])
    kind = type_string.split("@")[0]
    full_type = f"{parent_type}/{kind}" if parent_type and "/" not in kind else kind
    path = f"{parent_path}::{name}" if parent_path else name
    body, conditional = _body(declaration)
    existing = any(c.type == "existing" for c in declaration.children)
    out.append(Resource(path, full_type, existing, conditional, body))
    obj = next(
        (c for c in declaration.named_children if c.type == "object"),
        next((c for c in declaration.named_children if c.type == "if_statement"), None),
    )
    if obj is None:
        return
    if obj.type == "if_statement":
        obj = next(c for c in obj.named_children if c.type == "object")
    for prop in obj.named_children:
        if prop.type == "object_property" and prop.named_children[0].type == "resource_declaration":
            _resources(prop.named_children[0], path, full_type, out)


def _decorator_allowed(declaration: Node) -> list[Any] | None:
    previous = declaration.prev_named_sibling
    if previous is None or previous.type != "decorators":
        return None
    for decorator in previous.named_children:
        call = decorator.named_children[0]
        if call.type == "call_expression" and _text(call.named_children[0]) == "allowed":
            return bicep_value(call.named_children[1].named_children[0])  # type: ignore[no-any-return]
    return None


@cache
def parse_tree(path: Path) -> Node:
    return PARSER.parse(path.read_bytes()).root_node


@cache
def bicep(relative: str) -> BicepFile:
    path = INFRA / relative
    result = BicepFile(path)
    for node in parse_tree(path).named_children:
        if node.type == "parameter_declaration":
            named = node.named_children
            param: dict[str, Any] = {"type": _text(named[1])}
            if len(named) > 2:
                param["default"] = bicep_value(named[2])
            allowed = _decorator_allowed(node)
            if allowed is not None:
                param["allowed"] = allowed
            result.params[_text(named[0])] = param
        elif node.type == "variable_declaration":
            result.variables[_text(node.named_children[0])] = bicep_value(node.named_children[-1])
        elif node.type == "resource_declaration":
            _resources(node, "", "", result.resources)
        elif node.type == "module_declaration":
            body, _ = _body(node)
            result.modules[_text(node.named_children[0])] = (bicep_value(node.named_children[1]), body)
        elif node.type == "output_declaration":
            result.outputs.add(_text(node.named_children[0]))
    return result


def all_resources() -> list[tuple[BicepFile, Resource]]:
    return [(f, r) for p in BICEP_FILES for f in [bicep(str(p.relative_to(INFRA)))] for r in f.resources]


def resources_of_type(kind: str) -> list[tuple[BicepFile, Resource]]:
    return [(f, r) for f, r in all_resources() if r.type.lower() == kind.lower() and not r.existing]


def problems(root: Node) -> list[str]:
    found = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            found.append(
                f"line {line + 1}, column {column + 1}: {'missing' if node.is_missing else 'error'} {node.type}"
            )
        stack.extend(node.children)
    return found


# --- the files parse ------------------------------------------------------------------------------------


def test_the_expected_files_exist() -> None:
    names = {str(p.relative_to(INFRA)) for p in BICEP_FILES}
    assert {"main.bicep", "modules/functionapp.bicep", "modules/plan.bicep", "modules/storage.bicep"} <= names
    assert (ROOT / "azure.yaml").is_file() and (INFRA / "main.parameters.json").is_file()
    assert (ROOT / "Dockerfile").is_file()


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses_without_errors(path: Path) -> None:
    assert problems(parse_tree(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "resource a 'Microsoft.Web/sites@2024-04-01' = {\n  name: 'x'\n",  # unclosed object
        "param p string = \nvar v = {{ a: }}\n",
        "resource 'Microsoft.Web/sites@2024-04-01' = {}\n",  # no symbolic name
    ],
)
def test_the_parse_check_catches_broken_bicep(source: str) -> None:
    assert problems(PARSER.parse(source.encode()).root_node) != []


def test_modules_exist_and_get_the_parameters_they_declare() -> None:
    main = bicep("main.bicep")
    used = set()
    for symbol, (module_path, body) in main.modules.items():
        module = bicep(module_path)
        used.add(module_path)
        passed = set(body["params"])
        assert passed <= set(module.params), f"{symbol}: unknown params {passed - set(module.params)}"
        required = {name for name, p in module.params.items() if "default" not in p}
        assert required <= passed, f"{symbol}: missing params {required - passed}"
    assert used == {f"modules/{p.name}" for p in (INFRA / "modules").glob("*.bicep")}, "a module nobody uses"
    main_text = (INFRA / "main.bicep").read_text()
    for symbol, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", main_text):
        assert output in bicep(main.modules[symbol][0]).outputs, f"{symbol}.outputs.{output} does not exist"


def test_every_reference_to_a_declared_name_resolves() -> None:
    """Identifiers used in a module file are its params, vars, resources, modules, loop variables or
    Bicep functions: catches a renamed parameter that a compiler would reject."""
    functions = {
        "resourceGroup", "subscription", "subscriptionResourceId", "guid", "uniqueString", "toLower", "union",
        "items", "empty", "min", "environment", "tenant",
        # decorators
        "description", "allowed", "minLength", "maxLength", "minValue", "maxValue", "secure",
    }  # fmt: skip
    for path in BICEP_FILES:
        parsed = bicep(str(path.relative_to(INFRA)))
        declared = set(parsed.params) | set(parsed.variables) | set(parsed.modules) | functions
        declared |= {segment for r in parsed.resources for segment in r.path.split("::")}
        for node in _walk(parse_tree(path)):
            if node.type != "identifier" or node.parent is None:
                continue
            parent = node.parent
            declaring = {
                "object_property", "parameter_declaration", "variable_declaration", "resource_declaration",
                "module_declaration", "output_declaration", "for_statement",
            }  # fmt: skip
            if parent.type == "for_loop_parameters" or (parent.type in declaring and parent.named_children[0] == node):
                continue
            name = _text(node)
            loop_vars = _loop_variables(node)
            assert name in declared | loop_vars, f"{path.name}: {name!r} is not declared"


def _walk(node: Node) -> list[Node]:
    out = [node]
    for child in node.children:
        out.extend(_walk(child))
    return out


def _loop_variables(node: Node) -> set[str]:
    names: set[str] = set()
    current: Node | None = node
    while current is not None:
        if current.type == "for_statement":
            first = current.named_children[0]
            names.add(_text(first))
        current = current.parent
    return names


# --- the resources ---------------------------------------------------------------------------------------


def test_flex_consumption_plan_only() -> None:
    """Elastic Premium was dropped (issue 10, defect 2): its zip push with remote build and no Azure Files share
    is not a documented way to run Premium, and nothing here could test the documented one."""
    main = bicep("main.bicep")
    assert "planType" not in main.params and "elasticPremiumSku" not in main.params
    assert main.params["instanceMemoryMB"]["default"] == 4096
    assert set(main.params["instanceMemoryMB"]["allowed"]) == {2048, 4096}
    ((_, plan),) = resources_of_type("Microsoft.Web/serverfarms")
    assert plan.body["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan.body["kind"] == "functionapp"
    assert plan.body["properties"] == {"reserved": True}  # Linux
    for path in [*BICEP_FILES, ROOT / "azure.yaml", INFRA / "main.parameters.json"]:
        assert "ElasticPremium" not in path.read_text(), path.name
    for path in [ROOT / "README.md", ROOT / "docs" / "deploy.md"]:
        text = path.read_text()
        assert not {"ElasticPremium", "planType", "PLAN_TYPE", "elasticPremiumSku"} & set(re.findall(r"\w+", text))


@pytest.mark.parametrize("path", ["main.bicep", "modules/functionapp.bicep"])
def test_maximum_instance_count_has_flex_consumptions_bounds(path: str) -> None:
    """Flex Consumption's lowest maximum is 40 and its highest 1000 (Microsoft's Flex Consumption Bicep sample:
    @minValue(40) @maxValue(1000))."""
    declared = bicepeval.parameters(path)
    assert (declared["maximumInstanceCount"]["minValue"], declared["maximumInstanceCount"]["maxValue"]) == (40, 1000)
    assert 40 <= declared["maximumInstanceCount"]["default"] <= 1000
    assert declared["alwaysReadyInstances"]["minValue"] == 0 and declared["alwaysReadyInstances"]["default"] == 0


@pytest.mark.parametrize("count, expected", [(0, []), (2, [{"name": "http", "instanceCount": 2}])])
def test_always_ready_instances_keep_the_http_group_warm(count: int, expected: list[dict[str, Any]]) -> None:
    (app,) = [r for r in bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, "alwaysReadyInstances": count})
              if r.type == "Microsoft.Web/sites"]  # fmt: skip
    assert app.body["properties"]["functionAppConfig"]["scaleAndConcurrency"]["alwaysReady"] == expected


def test_function_app_runs_python_311_as_the_managed_identity() -> None:
    app_file = bicep("modules/functionapp.bicep")
    ((_, app),) = resources_of_type("Microsoft.Web/sites")
    assert app.body["kind"] == "functionapp,linux"
    assert app.body["identity"]["type"] == "UserAssigned"
    properties = app.body["properties"]
    assert properties["functionAppConfig"] == Expr("flexConfig")
    flex = app_file.variables["flexConfig"]
    assert flex["runtime"] == {"name": "python", "version": "3.11"}
    assert flex["scaleAndConcurrency"]["instanceMemoryMB"] == Expr("instanceMemoryMB")
    assert flex["scaleAndConcurrency"]["maximumInstanceCount"] == Expr("maximumInstanceCount")
    assert flex["scaleAndConcurrency"]["triggers"] == {
        "http": {"perInstanceConcurrency": Expr("httpPerInstanceConcurrency")}
    }
    assert app_file.params["httpPerInstanceConcurrency"]["default"] == 1
    storage = flex["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": Expr("identityId"),
    }
    # azd deploys to the app tagged with the service name in azure.yaml.
    assert app_file.params["serviceName"]["default"] == "skill"
    ((_, identity),) = resources_of_type("Microsoft.ManagedIdentity/userAssignedIdentities")
    assert identity.body["name"] == Expr("name")


def test_storage_account_has_no_shared_keys_and_the_containers() -> None:
    ((_, account),) = resources_of_type("Microsoft.Storage/storageAccounts")
    properties = account.body["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    containers = {r.path: r for _, r in resources_of_type("Microsoft.Storage/storageAccounts/blobServices/containers")}
    assert {r.body["name"] for r in containers.values()} == {
        Expr("deploymentContainerName"),
        Expr("modelsContainerName"),
        Expr("imagesContainerName"),
    }
    storage = bicep("modules/storage.bicep")
    main = bicep("main.bicep")
    assert storage.params["modelsContainerName"]["default"] == "models"
    assert main.params["modelsContainerName"]["default"] == "models"
    assert main.modules["storage"][1]["params"]["modelsContainerName"] == Expr("modelsContainerName")


def _role_assignments() -> list[tuple[BicepFile, Resource, str]]:
    found = []
    for parsed, resource in resources_of_type("Microsoft.Authorization/roleAssignments"):
        definition = resource.body["properties"]["roleDefinitionId"]
        assert isinstance(definition, Expr)
        guids = [
            v for k, v in parsed.variables.items() if isinstance(v, str) and re.search(rf"\b{k}\b", definition.text)
        ]
        assert len(guids) == 1, definition
        found.append((parsed, resource, guids[0]))
    return found


def _scope_type(parsed: BicepFile, scope: Any) -> str:
    assert isinstance(scope, Expr)
    (target,) = [r for r in parsed.resources if r.path == scope.text]
    return target.type


def test_role_assignments_for_the_host_and_the_model_store() -> None:
    assignments = _role_assignments()
    owners = [
        (p, r) for p, r, guid in assignments if guid == STORAGE_BLOB_DATA_OWNER and r.body["properties"]["principalId"]
    ]
    assert [_scope_type(p, r.body["scope"]) for p, r in owners] == ["Microsoft.Storage/storageAccounts"]
    assert owners[0][1].body["properties"]["principalId"] == Expr("appPrincipalId")

    contributors = [(p, r) for p, r, guid in assignments if guid == STORAGE_BLOB_DATA_CONTRIBUTOR]
    app_on_models = [
        r
        for p, r in contributors
        if r.body["properties"]["principalId"] == Expr("appPrincipalId")
        and _scope_type(p, r.body["scope"]) == "Microsoft.Storage/storageAccounts/blobServices/containers"
        and r.body["scope"].text.endswith("::models")
    ]
    assert len(app_on_models) == 1 and not app_on_models[0].conditional
    (models,) = [r for r in bicep("modules/storage-roles.bicep").resources if r.path.endswith("::models")]
    assert models.body["name"] == Expr("modelsContainerName")
    # main.bicep gives the roles to the app's identity.
    roles = bicep("main.bicep").modules["storageRoles"][1]["params"]
    assert roles["appPrincipalId"] == Expr("identity.outputs.principalId")
    # Every assignment has a deterministic name, so re-deploying does not collide with itself.
    for _, resource, _ in assignments:
        assert isinstance(resource.body["name"], Expr) and resource.body["name"].text.startswith("guid(")


@pytest.mark.parametrize(
    "role", [STORAGE_BLOB_DATA_OWNER, STORAGE_QUEUE_DATA_CONTRIBUTOR, STORAGE_TABLE_DATA_CONTRIBUTOR]
)
def test_the_app_identity_has_what_the_host_needs_on_its_storage_account(role: str) -> None:
    """Microsoft Learn "Connecting to host storage with an identity" and Microsoft's Flex Consumption Bicep
    sample (rbac.bicep): Blob Data Owner, Queue Data Contributor, Table Data Contributor on the account."""
    granted = [
        (p, r)
        for p, r, guid in _role_assignments()
        if guid == role and r.body["properties"]["principalId"] == Expr("appPrincipalId")
    ]
    assert [_scope_type(p, r.body["scope"]) for p, r in granted] == ["Microsoft.Storage/storageAccounts"]
    assert not granted[0][1].conditional
    assert granted[0][1].body["properties"]["principalType"] == "ServicePrincipal"


def test_application_insights_on_log_analytics() -> None:
    ((_, workspace),) = resources_of_type("Microsoft.OperationalInsights/workspaces")
    ((_, insights),) = resources_of_type("Microsoft.Insights/components")
    assert insights.body["properties"]["WorkspaceResourceId"] == Expr("logAnalytics.id")
    assert workspace.path == "logAnalytics"
    settings = bicep("main.bicep").variables["appSettings"]
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == Expr("monitoring.outputs.connectionString")


def test_host_storage_uses_the_identity_and_no_secret_is_in_any_file() -> None:
    settings = bicep("main.bicep").variables["appSettings"]
    assert settings["AzureWebJobsStorage__accountName"] == Expr("storage.outputs.name")
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == Expr("identity.outputs.clientId")
    assert settings["AZURE_CLIENT_ID"] == Expr("identity.outputs.clientId")
    assert "AzureWebJobsStorage" not in settings
    # In Azure the model store is reached by URL with the identity; secrets are empty.
    assert isinstance(settings["MODEL_BLOB_ACCOUNT_URL"], Expr)
    assert settings["MODEL_BLOB_ACCOUNT_URL"].text.startswith("'https://${storage.outputs.name}.blob.")
    for secret in ("MODEL_BLOB_CONNECTION_STRING", "AZURE_CLIENT_SECRET", "SKILL_API_KEY", "SEARCH_ADMIN_KEY"):
        assert settings[secret] == ""
    for path in [*BICEP_FILES, INFRA / "main.parameters.json"]:
        text = path.read_text()
        for forbidden in ("listKeys(", "AccountKey=", "InstrumentationKey="):
            assert forbidden not in text, f"{path.name} holds {forbidden}"


def test_every_setting_the_app_reads_is_in_the_bicep_app_settings_and_the_sample() -> None:
    names = settings_the_app_reads()
    assert len(names) >= 20
    settings = bicep("main.bicep").variables["appSettings"]
    sample = json.loads((ROOT / "local.settings.json.sample").read_text())["Values"]
    assert sorted(names - set(settings)) == [], "add these to appSettings in infra/main.bicep"
    assert sorted(names - set(sample)) == [], "add these to local.settings.json.sample"
    # Nothing stale or misspelt: every app setting is the app's or the host's.
    assert sorted(set(settings) - names - HOST_SETTINGS) == []


def test_the_literal_app_settings_are_values_settings_accepts() -> None:
    main = bicep("main.bicep")
    env = {}
    for name, value in main.variables["appSettings"].items():
        if isinstance(value, str):
            env[name] = value
        elif isinstance(value, Expr) and value.text in main.params:
            env[name] = str(main.params[value.text]["default"])
    assert env["MODEL_REFRESH_SCHEDULE"] == "0 */30 * * * *"
    settings = Settings.from_env(env)
    assert settings.refresh_schedule == "0 */30 * * * *" and settings.promotion == "better"
    assert settings.deadline_s == 200.0 and settings.default_top_k == 5


def test_main_parameters_json_and_azure_yaml() -> None:
    main = bicep("main.bicep")
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(parameters) <= set(main.params)
    required = {name for name, p in main.params.items() if "default" not in p}
    assert required <= set(parameters)
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    # azd provision as a service principal (CI) needs ServicePrincipal here, or ARM answers UnmatchedPrincipalType.
    assert parameters["principalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"
    # Re-enrichment: `azd env set SEARCH_SERVICE_NAME ...` (docs/deploy.md); empty, the default, means none.
    assert parameters["searchServiceName"]["value"] == "${SEARCH_SERVICE_NAME=}"
    assert parameters["searchServiceResourceGroup"]["value"] == "${SEARCH_SERVICE_RESOURCE_GROUP=}"
    assert main.params["searchServiceName"]["default"] == main.params["searchServiceResourceGroup"]["default"] == ""
    assert set(main.params["principalType"]["allowed"]) == {"User", "ServicePrincipal", "Group"}
    azure_yaml = (ROOT / "azure.yaml").read_text()
    service = re.search(r"^services:\n  (\w[\w-]*):\n((?:    .*\n)+)", azure_yaml, re.MULTILINE)
    assert service is not None
    assert service.group(1) == bicep("modules/functionapp.bicep").params["serviceName"]["default"]
    assert {line.strip() for line in service.group(2).splitlines()} >= {
        "project: .",
        "language: python",
        "host: function",
    }
    assert re.search(r"^infra:\n  provider: bicep\n  path: infra\n  module: main$", azure_yaml, re.MULTILINE)


def test_dockerfile_builds_the_lean_runtime_on_the_functions_image() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.startswith("#")]
    assert "FROM mcr.microsoft.com/azure-functions/python:4-python3.11" in lines
    assert "RUN pip install --no-cache-dir -r /requirements.txt" in lines
    assert not any("torch" in line for line in lines)
    copied = {line.split()[1].rstrip("/") for line in lines if line.startswith("COPY ")}
    functions = {p.parent.name for p in ROOT.glob("*/function.json")}
    assert functions and functions <= copied
    assert {"requirements.txt", "host.json", "shared", "model_cache/sample"} <= copied
    assert "ENV AzureWebJobsScriptRoot=/home/site/wwwroot \\" in lines


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_unused_parameters_or_variables(path: Path) -> None:
    """What the Bicep linter warns about (no-unused-params, no-unused-vars)."""
    parsed = bicep(str(path.relative_to(INFRA)))
    used = {
        _text(node)
        for node in _walk(parse_tree(path))
        if node.type == "identifier"
        and node.parent is not None
        and not (
            node.parent.type in {"parameter_declaration", "variable_declaration", "object_property"}
            and node.parent.named_children[0] == node
        )
    }
    assert sorted((set(parsed.params) | set(parsed.variables)) - used) == []


# --- every resource body against Azure's type definitions (bicep-types-az) -------------------------------------

CASES = bicepeval.parameter_cases()


@pytest.mark.parametrize("case", CASES, ids=[bicepeval.case_id(c) for c in CASES])
def test_every_resource_body_matches_its_bicep_type_definition(case: dict[str, Any]) -> None:
    resources = bicepeval.evaluate(case)
    assert len(resources) >= 15
    assert [error for resource in resources for error in bicepeval.check_resource(resource)] == []


def test_the_parameter_cases_reach_the_conditional_branches() -> None:
    """The sweep is only worth something if it switches branches: each conditional resource is deployed in
    some case and left out in another, and each ternary on a parameter takes both sides."""
    seen: dict[str, set[bool]] = {}
    settings_seen: set[str] = set()
    for case in CASES:
        resources = bicepeval.evaluate(case)
        symbols = {f"{r.file}:{r.symbol}" for r in resources}
        for symbol in ("modules/aml-role.bicep:workspaceReader", "modules/storage-roles.bicep:searchImagesReader",
                       "modules/labeling-role.bicep:labelingContributor",
                       "modules/storage-roles.bicep:deployerModelsContributor",
                       "modules/search-roles.bicep:appServiceContributor",
                       "modules/search-roles.bicep:deployerIndexDataReader",
                       "modules/storage-roles.bicep:searchCacheBlobContributor",
                       "modules/storage-roles.bicep:searchCacheTableContributor"):  # fmt: skip
            seen.setdefault(symbol, set()).add(symbol in symbols)
        (app,) = [r for r in resources if r.type == "Microsoft.Web/sites"]
        settings = {s["name"]: s["value"] for s in app.body["properties"]["siteConfig"]["appSettings"]}
        settings_seen.add(settings["AzureWebJobs.RefreshModel.Disabled"])
    assert all(both == {True, False} for both in seen.values()), seen
    assert settings_seen == {"true", "false"}


def _functionapp_with(old: str, new: str) -> dict[str, str]:
    source = (INFRA / "modules" / "functionapp.bicep").read_text()
    assert old in source, old
    return {"modules/functionapp.bicep": source.replace(old, new, 1)}


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "    httpsOnly: true\n",
            "    httpsOnly: true\n    httpsOnlyy: true\n",
            "properties.httpsOnlyy: unknown property",
        ),
        (
            "      minTlsVersion: '1.2'\n",
            "      minTlsVersion: '1.2'\n      scaleAndConcurrency: {}\n",
            "properties.siteConfig.scaleAndConcurrency: unknown property",
        ),  # misplaced: belongs in functionAppConfig
        (
            "    type: 'UserAssigned'\n",
            "    type: 'UserAssgned'\n",
            "identity.type: 'UserAssgned' is not one of 'SystemAssigned' | 'UserAssigned'",
        ),
        ("    httpsOnly: true\n", "    httpsOnly: 'true'\n", "properties.httpsOnly: 'true' is not a boolean"),
        (
            "    maximumInstanceCount: maximumInstanceCount\n",
            "    maximumInstanceCount: '40'\n",
            "scaleAndConcurrency.maximumInstanceCount: '40' is not an integer",
        ),
        (
            "    httpsOnly: true\n",
            "    httpsOnly: true\n    defaultHostName: 'x.example'\n",
            "properties.defaultHostName: read-only property",
        ),
        (
            "    httpsOnly: true\n",
            "    httpsOnly: true\n    HttpsOnly: true\n",
            "properties.HttpsOnly: unknown property; the definition spells it 'httpsOnly'",
        ),
        ("Microsoft.Web/sites@2024-04-01", "Microsoft.Web/sites@2099-01-01", "no type definition for this type"),
    ],
)
def test_the_schema_check_reports_injected_defects(old: str, new: str, message: str) -> None:
    resources = bicepeval.evaluate(CASES[0], sources=_functionapp_with(old, new))
    errors = [error for resource in resources for error in bicepeval.check_resource(resource)]
    assert len(errors) == 1 and message in errors[0], errors


# --- what Flex Consumption rejects although the schema allows it ----------------------------------------------

# Microsoft Learn, "App settings reference for Azure Functions", section "Flex Consumption plan deprecations"
# (learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations), plus the
# siteConfig properties of ARM's BadRequest quoted in Azure/azure-cli#31414 and microsoft/azure-pipelines-tasks
# #21032. One row per name; add a row when Microsoft adds one.
FLEX_REJECTED_APP_SETTINGS = {
    "ENABLE_ORYX_BUILD": "replaced by the remoteBuild parameter of a Flex deployment",
    "FUNCTIONS_EXTENSION_VERSION": "set by the backend",
    "FUNCTIONS_WORKER_RUNTIME": "replaced by functionAppConfig.runtime.name",
    "FUNCTIONS_WORKER_RUNTIME_VERSION": "replaced by functionAppConfig.runtime.version",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY": "replaced by functionAppConfig.scaleAndConcurrency.triggers",
    "FUNCTIONS_WORKER_PROCESS_COUNT": "not valid",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED": "not valid",
    "SCM_DO_BUILD_DURING_DEPLOYMENT": "replaced by the remoteBuild parameter of a Flex deployment",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": "replaced by functionAppConfig.deployment",
    "WEBSITE_CONTENTOVERVNET": "not used for networking in Flex Consumption",
    "WEBSITE_CONTENTSHARE": "replaced by functionAppConfig.deployment",
    "WEBSITE_DNS_SERVER": "DNS comes from the integrated virtual network",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT": "replaced by scaleAndConcurrency.maximumInstanceCount",
    "WEBSITE_NODE_DEFAULT_VERSION": "replaced by functionAppConfig.runtime.version",
    "WEBSITE_RUN_FROM_PACKAGE": "not used for deployments in Flex Consumption",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION": "no content share in Flex Consumption",
    "WEBSITE_VNET_ROUTE_ALL": "not used for networking in Flex Consumption",
}
# Site properties, checked on `properties` and on `properties.siteConfig` (the table writes `properties.X`
# for both; ARM's error names them Site.SiteConfig.X), case-insensitively as ARM reads them.
FLEX_REJECTED_SITE_PROPERTIES = {
    "alwaysOn": "not valid",
    "containerSize": "renamed instanceMemoryMB",
    "dnsConfiguration": "custom DNS comes from the virtual network",
    "ftpsState": "FTPS not supported (ARM BadRequest, Azure/azure-cli#31414)",
    "isReserved": "not valid",
    "isXenon": "not valid",
    "javaVersion": "replaced by functionAppConfig.runtime.version",
    "linuxFxVersion": "replaced by functionAppConfig.runtime",
    "netFrameworkVersion": "replaced by functionAppConfig.runtime.version (ARM BadRequest)",
    "powerShellVersion": "replaced by functionAppConfig.runtime.version",
    "functionAppScaleLimit": "renamed maximumInstanceCount",
    "preWarmedInstanceCount": "renamed alwaysReady (ARM BadRequest)",
    "use32BitWorkerProcess": "32-bit not supported (ARM BadRequest)",
    "functionsRuntimeScaleMonitoringEnabled": "ARM BadRequest, Azure/azure-cli#31414",
    "vnetBackupRestoreEnabled": "not used for networking in Flex Consumption",
    "vnetContentShareEnabled": "not used for networking in Flex Consumption",
    "vnetImagePullEnabled": "not used for networking in Flex Consumption",
    "vnetRouteAllEnabled": "not used for networking in Flex Consumption",
    "windowsFxVersion": "not valid",
}


def flex_violations(resources: list[bicepeval.Deployed]) -> list[str]:
    """What a Flex Consumption app in `resources` sends that Flex rejects or ignores."""
    found = []
    rejected_properties = {name.lower(): why for name, why in FLEX_REJECTED_SITE_PROPERTIES.items()}
    for app in [r for r in resources if r.type == "Microsoft.Web/sites" and not r.existing]:
        properties = app.body.get("properties", {})
        site_config = properties.get("siteConfig") or {}
        for where, values in (("properties", properties), ("properties.siteConfig", site_config)):
            for key, value in values.items():
                if value is not None and str(key).lower() in rejected_properties:
                    found.append(f"{app.symbol}: {where}.{key} ({rejected_properties[str(key).lower()]})")
        for setting in site_config.get("appSettings") or []:
            name = setting.get("name")
            if isinstance(name, str) and name.upper() in FLEX_REJECTED_APP_SETTINGS:
                found.append(f"{app.symbol}: app setting {name} ({FLEX_REJECTED_APP_SETTINGS[name.upper()]})")
    return found


@pytest.mark.parametrize("case", CASES, ids=[bicepeval.case_id(c) for c in CASES])
def test_the_flex_consumption_app_sends_nothing_flex_rejects(case: dict[str, Any]) -> None:
    resources = bicepeval.evaluate(case)
    assert any(r.type == "Microsoft.Web/sites" for r in resources)
    assert flex_violations(resources) == []


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "      minTlsVersion: '1.2'\n",
            "      minTlsVersion: '1.2'\n      ftpsState: 'Disabled'\n",
            "properties.siteConfig.ftpsState (FTPS not supported",
        ),
        (
            "      minTlsVersion: '1.2'\n",
            "      minTlsVersion: '1.2'\n      use32BitWorkerProcess: false\n",
            "properties.siteConfig.use32BitWorkerProcess (32-bit",
        ),
        (
            "    httpsOnly: true\n",
            "    httpsOnly: true\n    vnetRouteAllEnabled: true\n",
            "properties.vnetRouteAllEnabled",
        ),
        (
            "        for setting in items(appSettings): {",
            "        for setting in items(union(appSettings, { FUNCTIONS_WORKER_RUNTIME: 'python' })): {",
            "app setting FUNCTIONS_WORKER_RUNTIME",
        ),
    ],
)
def test_the_flex_rules_report_injected_defects(old: str, new: str, message: str) -> None:
    violations = flex_violations(bicepeval.evaluate(CASES[0], sources=_functionapp_with(old, new)))
    assert len(violations) == 1 and message in violations[0], violations


@pytest.mark.parametrize("name", ["WEBSITE_RUN_FROM_PACKAGE", "SCM_DO_BUILD_DURING_DEPLOYMENT", "website_contentshare"])
def test_the_flex_rules_catch_a_rejected_setting_passed_as_an_override(name: str) -> None:
    resources = bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, "appSettingOverrides": {name: "1"}})
    assert [v.split(" (")[0] for v in flex_violations(resources)] == [f"functionApp: app setting {name}"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"maximumInstanceCount": 39}, "main.bicep: parameter maximumInstanceCount = 39 is below @minValue(40)"),
        ({"principalType": "Robot"}, "main.bicep: parameter principalType = 'Robot' is not one of"),
    ],
)
def test_the_evaluator_enforces_parameter_decorators(params: dict[str, Any], message: str) -> None:
    with pytest.raises(bicepeval.BicepEvalError) as caught:
        bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, **params})
    assert str(caught.value).startswith(message)


def test_a_module_gets_values_its_decorators_accept() -> None:
    """main.bicep passes maximumInstanceCount to functionapp.bicep: a narrower module bound would fail there."""
    source = (INFRA / "modules" / "functionapp.bicep").read_text().replace("@minValue(40)", "@minValue(100)", 1)
    with pytest.raises(
        bicepeval.BicepEvalError, match=r"modules/functionapp.bicep: parameter maximumInstanceCount = 40"
    ):
        bicepeval.evaluate(CASES[0], sources={"modules/functionapp.bicep": source})


def test_always_ready_instances_never_exceed_the_maximum() -> None:
    case = {**bicepeval.REQUIRED_PARAMETERS, "alwaysReadyInstances": 1000, "maximumInstanceCount": 40}
    (app,) = [r for r in bicepeval.evaluate(case) if r.type == "Microsoft.Web/sites"]
    assert app.body["properties"]["functionAppConfig"]["scaleAndConcurrency"]["alwaysReady"] == [
        {"name": "http", "instanceCount": 40}
    ]


def test_no_document_passes_azds_parameters_file_to_the_azure_cli() -> None:
    """main.parameters.json holds azd substitutions (${AZURE_LOCATION}) that `az deployment` would pass as
    literal strings."""
    command = re.compile(r"az deployment [^\n]*(-p|--parameters)\s+@?\S*main\.parameters\.json")
    for path in [INFRA / "main.bicep", *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        assert not command.search(path.read_text()), path.name
    assert command.search("// `az deployment group create -g g -f infra/main.bicep -p infra/main.parameters.json`")


# --- re-enrichment: the search service named in main.bicep (issue 12) -----------------------------------------

SEARCH_NAMED = {"searchServiceName": "srch-images"}
APP = "identity.outputs.principalId"  # the app's identity, as main.bicep passes it to the modules
SEARCH_IDENTITY = "searchRoles!.outputs.searchIdentityPrincipalId"  # read from the named service
GIVEN_SEARCH_IDENTITY = bicepeval.SAMPLE_STRINGS["searchServicePrincipalId"]
DEPLOYER = bicepeval.SAMPLE_STRINGS["principalId"]


def granted_roles(resources: list[bicepeval.Deployed]) -> set[tuple[str, str, str]]:
    """(role name, principal, file:scope) of every role assignment the deployment creates."""
    found = set()
    for resource in resources:
        if resource.type != "Microsoft.Authorization/roleAssignments":
            continue
        properties = resource.body["properties"]
        definition = properties["roleDefinitionId"]
        assert isinstance(definition, bicepeval.Unknown), definition  # subscriptionResourceId(..., <role var>)
        variables = bicep(resource.file).variables
        (role,) = [v for k, v in variables.items() if isinstance(v, str) and re.search(rf"\b{k}\b", definition.what)]
        principal = properties["principalId"]
        scope = resource.body["scope"]
        found.add(
            (
                ROLE_NAMES.get(role, role),
                principal if isinstance(principal, str) else principal.what,
                f"{resource.file}:{scope.symbol if isinstance(scope, bicepeval.ResourceRef) else scope}",
            )
        )
    return found


SEARCH_SERVICE = "modules/search-roles.bicep:searchService"
ACCOUNT = "modules/storage-roles.bicep:account"
IMAGES = "modules/storage-roles.bicep:account::blobService::images"


@pytest.mark.parametrize(
    "params, expected",
    [
        pytest.param({}, set(), id="no-search-service"),
        pytest.param(
            {"searchServicePrincipalId": GIVEN_SEARCH_IDENTITY},
            {("Storage Blob Data Reader", GIVEN_SEARCH_IDENTITY, IMAGES)},
            id="search-identity-only",
        ),
        pytest.param(
            SEARCH_NAMED,
            {
                ("Search Service Contributor", APP, SEARCH_SERVICE),
                ("Search Index Data Reader", APP, SEARCH_SERVICE),
                ("Storage Blob Data Reader", SEARCH_IDENTITY, IMAGES),
                ("Storage Blob Data Contributor", SEARCH_IDENTITY, ACCOUNT),
                ("Storage Table Data Contributor", SEARCH_IDENTITY, ACCOUNT),
            },
            id="search-service-named",
        ),
        pytest.param(
            {**SEARCH_NAMED, "searchServicePrincipalId": GIVEN_SEARCH_IDENTITY, "principalId": DEPLOYER},
            {
                ("Search Service Contributor", APP, SEARCH_SERVICE),
                ("Search Index Data Reader", APP, SEARCH_SERVICE),
                ("Search Index Data Reader", DEPLOYER, SEARCH_SERVICE),
                # The module's output, which is the given id (test below): only Azure evaluates it.
                ("Storage Blob Data Reader", SEARCH_IDENTITY, IMAGES),
                ("Storage Blob Data Contributor", SEARCH_IDENTITY, ACCOUNT),
                ("Storage Table Data Contributor", SEARCH_IDENTITY, ACCOUNT),
            },
            id="search-service-named-with-identity-and-deployer",
        ),
    ],
)
def test_the_re_enrichment_roles_are_granted_exactly_when_a_search_service_is_named(
    params: dict[str, Any], expected: set[tuple[str, str, str]]
) -> None:
    """The app: Search Service Contributor (reset and run the indexer, reset skills: "Create, edit and run
    indexers/data sources/skillsets", Microsoft Learn "Connect to Azure AI Search using roles") and Search Index
    Data Reader (`reindex --status` counts documents: a data action no management role holds). The search
    service's identity: Storage Blob Data Contributor and Storage Table Data Contributor on the cache's account
    ("Write to an enrichment cache", Microsoft Learn "Connect to Azure Storage using a managed identity (Azure AI
    Search)"). The deployer: Search Index Data Reader, for `reindex --status` from their machine."""
    resources = bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, **params})
    roles = granted_roles(resources)
    # What the same deployment grants without any search parameter: the host's, the store's, the deployer's.
    without_search = {k: v for k, v in params.items() if not k.startswith("search")}
    baseline = granted_roles(bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, **without_search}))
    assert baseline <= roles
    assert roles - baseline == expected
    # Every role on the search service is in the search-roles module, deployed into the service's group.
    assert {r.file for r in resources if r.type == "Microsoft.Search/searchServices"} == (
        {"modules/search-roles.bicep"} if "searchServiceName" in params else set()
    )


def test_the_search_roles_module_runs_in_the_search_services_resource_group() -> None:
    main = bicep("main.bicep")
    _, body = main.modules["searchRoles"]
    assert body["scope"] == Expr("resourceGroup(searchGroup)")
    assert main.variables["searchGroup"] == Expr(
        "empty(searchServiceResourceGroup) ? resourceGroup().name : searchServiceResourceGroup"
    )
    ((_, service),) = [(f, r) for f, r in all_resources() if r.type == "Microsoft.Search/searchServices"]
    assert service.existing and service.body == {"name": Expr("searchServiceName")}
    # The search identity: the one given (searchServicePrincipalId), else the named service's system-assigned one.
    # ARM's if() evaluates only the branch taken (Microsoft Learn, "Logical functions for ARM templates", if), so a
    # given id never reads the service's identity.
    assert body["params"]["searchIdentityPrincipalId"] == Expr("searchServicePrincipalId")
    text = (INFRA / "modules" / "search-roles.bicep").read_text()
    assert (
        "output searchIdentityPrincipalId string = empty(searchIdentityPrincipalId) ? "
        "searchService.identity!.principalId : searchIdentityPrincipalId\n"
    ) in text
    assert main.variables["searchPrincipal"] == Expr(
        "searchEnabled ? searchRoles!.outputs.searchIdentityPrincipalId : searchServicePrincipalId"
    )


def _app_settings(params: dict[str, Any]) -> dict[str, Any]:
    (app,) = [
        r for r in bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, **params}) if r.type == "Microsoft.Web/sites"
    ]
    return {s["name"]: s["value"] for s in app.body["properties"]["siteConfig"]["appSettings"]}


@pytest.mark.parametrize(
    "params, endpoint, disabled, mode",
    [
        pytest.param({}, "", "true", "off", id="neither"),
        pytest.param({"amlWorkspaceName": "mlw-labeling"}, "", "false", "off", id="aml"),
        pytest.param(SEARCH_NAMED, "https://srch-images.search.windows.net", "false", "full", id="search"),
        pytest.param(
            {**SEARCH_NAMED, "searchServiceResourceGroup": "rg-search", "amlWorkspaceName": "mlw-labeling"},
            "https://srch-images.search.windows.net",
            "false",
            "full",
            id="search-and-aml",
        ),
    ],
)
def test_a_named_search_service_sets_search_endpoint_and_enables_refresh_model(
    params: dict[str, Any], endpoint: str, disabled: str, mode: str
) -> None:
    """SEARCH_ENDPOINT derives from the named service, and RefreshModel runs when AML or re-enrichment has work
    (shared.refresh.policy.timer_has_work), read back through Settings as the app reads them."""
    settings = _app_settings(params)
    assert settings["SEARCH_ENDPOINT"] == endpoint
    assert settings["AzureWebJobs.RefreshModel.Disabled"] == disabled
    assert settings["SEARCH_ADMIN_KEY"] == "" and settings["REINDEX_MODE"] == ""
    app = Settings.from_env({k: v for k, v in settings.items() if isinstance(v, str)})
    assert (app.search_endpoint or "", app.reindex_mode) == (endpoint, mode)
    assert app.search_indexer_name == "automl-images-indexer" and app.search_skill_name == "classify-images"
    outputs = (INFRA / "main.bicep").read_text()
    assert "output SEARCH_ENDPOINT string = searchEndpoint\n" in outputs


def test_an_override_still_replaces_the_derived_search_endpoint() -> None:
    """Outside the public cloud the search domain differs: appSettingOverrides wins over the derived value."""
    sovereign = "https://srch-images.search.azure.us"
    settings = _app_settings({**SEARCH_NAMED, "appSettingOverrides": {"SEARCH_ENDPOINT": sovereign}})
    assert settings["SEARCH_ENDPOINT"] == sovereign


def test_the_schema_check_covers_the_search_service_and_its_role_assignments() -> None:
    resources = bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, **SEARCH_NAMED})
    search = [r for r in resources if r.file == "modules/search-roles.bicep"]
    assert {(r.type, r.api_version) for r in search} == {
        ("Microsoft.Search/searchServices", "2025-05-01"),
        ("Microsoft.Authorization/roleAssignments", "2022-04-01"),
    }
    assert all(bicepeval.resource_type_known(r.type, r.api_version) for r in search)
    assert [e for r in search for e in bicepeval.check_resource(r)] == []
    # An unvendored API version is reported, as for every other provider.
    source = (INFRA / "modules" / "search-roles.bicep").read_text()
    broken = source.replace("Microsoft.Search/searchServices@2025-05-01", "Microsoft.Search/searchServices@2099-01-01")
    resources = bicepeval.evaluate(
        {**bicepeval.REQUIRED_PARAMETERS, **SEARCH_NAMED}, sources={"modules/search-roles.bicep": broken}
    )
    errors = [e for r in resources for e in bicepeval.check_resource(r)]
    assert len(errors) == 1 and "searchService (Microsoft.Search/searchServices@2099-01-01)" in errors[0], errors


LABELING = {"labelingStorageAccountName": "stlabeling", "labelingContainerName": "labeling-dataset"}


@pytest.mark.parametrize(
    "params, expected",
    [
        pytest.param({}, set(), id="no-labeling-account"),
        pytest.param({"labelingStorageAccountName": "stlabeling"}, set(), id="account-without-container"),
        pytest.param(
            LABELING,
            {("Storage Blob Data Contributor", APP, "modules/labeling-role.bicep:account::blobService::labeling")},
            id="account-and-container",
        ),
    ],
)
def test_the_labeling_container_role_is_granted_on_that_container_only(
    params: dict[str, Any], expected: set[tuple[str, str, str]]
) -> None:
    resources = bicepeval.evaluate({**bicepeval.REQUIRED_PARAMETERS, **params})
    baseline = granted_roles(bicepeval.evaluate(dict(bicepeval.REQUIRED_PARAMETERS)))
    assert granted_roles(resources) - baseline == expected


def test_the_labeling_role_module_runs_in_the_accounts_resource_group() -> None:
    main = bicep("main.bicep")
    _, body = main.modules["labelingRole"]
    assert body["scope"] == Expr("resourceGroup(labelingGroup)")
    assert main.variables["labelingGroup"] == Expr(
        "empty(labelingStorageResourceGroup) ? resourceGroup().name : labelingStorageResourceGroup"
    )
    assert main.variables["labelingEnabled"] == Expr(
        "!empty(labelingStorageAccountName) && !empty(labelingContainerName)"
    )
