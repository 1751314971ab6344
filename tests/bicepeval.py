"""Evaluate the Bicep templates in infra/ for one set of parameter values, and check every resource body against
the Bicep type definitions (Azure/bicep-types-az `types.json`, vendored in tests/data/bicep-types/).

No Bicep compiler runs here, so this is a small evaluator over the tree-sitter-bicep syntax tree: parameters,
variables, conditions, ternaries, loops, `union`/`items`/`empty` and module parameters are evaluated; what only
Azure knows at deploy time (resource ids, module outputs, `guid()`, `resourceGroup()`) is an `Unknown` value,
which the type check accepts wherever it stands. A module is evaluated with the parameters its caller passes,
so a branch that depends on a main.bicep parameter is checked for the value that reaches it.

The checker applies the rules the Bicep compiler applies with the same definitions: an unknown or misplaced
property, a value of the wrong type, a string that is none of the allowed literals (enums), a missing required
property and a read-only property set by the template are errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import tree_sitter_bicep
from tree_sitter import Language, Node, Parser

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
TYPES_DIR = Path(__file__).resolve().parent / "data" / "bicep-types"
PARSER = Parser(Language(tree_sitter_bicep.language()))

# Type flags of bicep-types (README in tests/data/bicep-types/).
FLAG_REQUIRED, FLAG_READ_ONLY = 1, 2
# Keys of a resource declaration that are Bicep's own, not part of the resource body sent to ARM.
BICEP_KEYWORDS = {"parent", "scope", "dependsOn"}


class BicepEvalError(Exception):
    """The template uses something this evaluator cannot evaluate (or a name that is not declared)."""


@dataclass(frozen=True)
class Unknown:
    """A value only Azure knows at deploy time (an id, a module output, guid(), ...)."""

    what: str


@dataclass(frozen=True)
class ResourceRef:
    symbol: str


@dataclass(frozen=True)
class ModuleRef:
    symbol: str


@dataclass
class Deployed:
    """One resource declaration, evaluated for one parameter set."""

    file: str  # path relative to infra/
    symbol: str  # symbolic name; nested ones joined with '::'
    type: str  # full resource type, e.g. Microsoft.Storage/storageAccounts/blobServices/containers
    api_version: str
    existing: bool
    body: dict[str, Any]


@dataclass
class _Scope:
    file: str
    source: bytes
    params: dict[str, Any]
    variables: dict[str, Node] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)
    resources: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    loop: dict[str, Any] = field(default_factory=dict)


def _text(node: Node) -> str:
    return (node.text or b"").decode()


def _child(node: Node, kind: str) -> Node | None:
    return next((c for c in node.named_children if c.type == kind), None)


@cache
def _parse(source: bytes) -> Node:
    return PARSER.parse(source).root_node


# --- evaluation ----------------------------------------------------------------------------------------------


def evaluate(
    params: Mapping[str, Any] | None = None,
    *,
    main: str = "main.bicep",
    sources: Mapping[str, str] | None = None,
) -> list[Deployed]:
    """Every resource declaration of `main` and its modules, for `params` (others take their defaults).

    `sources` replaces the text of files (path relative to infra/), to test the checker on injected defects.
    Conditional resources and modules whose condition is false are left out.
    """
    out: list[Deployed] = []
    _evaluate_file(main, dict(params or {}), dict(sources or {}), out)
    return out


def _read(file: str, sources: Mapping[str, str]) -> bytes:
    if file in sources:
        return sources[file].encode()
    return (INFRA / file).read_bytes()


def parameters(file: str = "main.bicep", sources: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """name -> {"type", "default"?, "allowed"?, "minValue"?, "maxValue"?} of a file's parameters (literal defaults)."""
    root = _parse(_read(file, sources or {}))
    found: dict[str, dict[str, Any]] = {}
    scope = _Scope(file, b"", {})
    for node in root.named_children:
        if node.type != "parameter_declaration":
            continue
        named = node.named_children
        info: dict[str, Any] = {"type": _text(named[1])}
        if len(named) > 2:
            try:
                info["default"] = _eval(named[2], scope, {})
            except BicepEvalError:
                info["default"] = Unknown(_text(named[2]))
        decorators = node.prev_named_sibling
        if decorators is not None and decorators.type == "decorators":
            for decorator in decorators.named_children:
                call = decorator.named_children[0]
                if call.type == "call_expression":
                    name = _text(call.named_children[0])
                    args = [a for a in call.named_children[1].named_children]
                    if name in {"allowed", "minValue", "maxValue", "minLength", "maxLength"} and args:
                        info[name] = _eval(args[0], scope, {})
        found[_text(named[0])] = info
    return found


def _evaluate_file(file: str, given: dict[str, Any], sources: Mapping[str, str], out: list[Deployed]) -> None:
    source = _read(file, sources)
    root = _parse(source)
    declared = parameters(file, sources)
    unknown = set(given) - set(declared)
    if unknown:
        raise BicepEvalError(f"{file}: no parameter named {sorted(unknown)}")
    scope = _Scope(file, source, {})
    for node in root.named_children:
        if node.type == "variable_declaration":
            scope.variables[_text(node.named_children[0])] = node.named_children[-1]
        elif node.type == "resource_declaration":
            scope.resources.add(_text(node.named_children[0]))
            _nested_symbols(node, scope)
        elif node.type == "module_declaration":
            scope.modules.add(_text(node.named_children[0]))
    for name, info in declared.items():
        if name in given:
            _check_parameter(file, name, info, given[name])
            scope.params[name] = given[name]
        elif "default" in info:
            # Defaults may refer to other parameters or functions: evaluate them in the file's scope.
            node = next(
                n.named_children[2]
                for n in root.named_children
                if n.type == "parameter_declaration" and _text(n.named_children[0]) == name
            )
            scope.params[name] = _eval(node, scope, {})
        else:
            raise BicepEvalError(f"{file}: parameter {name} has no default and no value")
    for node in root.named_children:
        if node.type == "resource_declaration":
            _resource(node, scope, "", "", out)
        elif node.type == "module_declaration":
            _module(node, scope, sources, out)


def _check_parameter(file: str, name: str, info: Mapping[str, Any], value: Any) -> None:
    """A value passed to a parameter meets its decorators (what ARM checks when the deployment starts)."""
    if not _known(value):
        return
    problems = []
    if "allowed" in info and value not in info["allowed"]:
        problems.append(f"not one of {info['allowed']}")
    if "minValue" in info and value < info["minValue"]:
        problems.append(f"below @minValue({info['minValue']})")
    if "maxValue" in info and value > info["maxValue"]:
        problems.append(f"above @maxValue({info['maxValue']})")
    if "minLength" in info and len(value) < info["minLength"]:
        problems.append(f"shorter than @minLength({info['minLength']})")
    if "maxLength" in info and len(value) > info["maxLength"]:
        problems.append(f"longer than @maxLength({info['maxLength']})")
    if problems:
        raise BicepEvalError(f"{file}: parameter {name} = {value!r} is {', '.join(problems)}")


def _nested_symbols(declaration: Node, scope: _Scope, prefix: str = "") -> None:
    name = _text(declaration.named_children[0])
    path = f"{prefix}::{name}" if prefix else name
    scope.resources.add(path)
    body = _declaration_object(declaration)
    if body is None:
        return
    for prop in body.named_children:
        if prop.type == "object_property" and prop.named_children[0].type == "resource_declaration":
            _nested_symbols(prop.named_children[0], scope, path)


def _declaration_object(declaration: Node) -> Node | None:
    body = _child(declaration, "object")
    if body is None:
        condition = _child(declaration, "if_statement")
        body = _child(condition, "object") if condition is not None else None
    return body


def _condition(declaration: Node, scope: _Scope) -> bool:
    condition = _child(declaration, "if_statement")
    if condition is None:
        return True
    test = _child(condition, "parenthesized_expression")
    assert test is not None
    value = _eval(test, scope, {})
    return value is not False  # unknown at deploy time: checked as if it held


def _resource(declaration: Node, scope: _Scope, parent_path: str, parent_type: str, out: list[Deployed]) -> None:
    if not _condition(declaration, scope):
        return
    name = _text(declaration.named_children[0])
    type_string = _eval(declaration.named_children[1], scope, {})
    kind, _, version = str(type_string).partition("@")
    full_type = f"{parent_type}/{kind}" if parent_type and "/" not in kind else kind
    path = f"{parent_path}::{name}" if parent_path else name
    existing = any(c.type == "existing" for c in declaration.children)
    body_node = _declaration_object(declaration)
    body = _eval(body_node, scope, {}) if body_node is not None else {}
    if not version and parent_type:
        version = next(d.api_version for d in reversed(out) if d.type == parent_type)
    out.append(Deployed(scope.file, path, full_type, version, existing, body))
    if body_node is not None:
        for prop in body_node.named_children:
            if prop.type == "object_property" and prop.named_children[0].type == "resource_declaration":
                _resource(prop.named_children[0], scope, path, full_type, out)


def _module(declaration: Node, scope: _Scope, sources: Mapping[str, str], out: list[Deployed]) -> None:
    if not _condition(declaration, scope):
        return
    path = _eval(declaration.named_children[1], scope, {})
    body_node = _declaration_object(declaration)
    assert body_node is not None
    body = _eval(body_node, scope, {})
    target = str((Path(scope.file).parent / str(path)).as_posix())
    _evaluate_file(target, dict(body.get("params", {})), sources, out)


def _lookup(name: str, scope: _Scope, loop: dict[str, Any]) -> Any:
    if name in loop:
        return loop[name]
    if name in scope.params:
        return scope.params[name]
    if name in scope.variables:
        if name not in scope.resolved:
            scope.resolved[name] = _eval(scope.variables[name], scope, {})
        return scope.resolved[name]
    if name in scope.resources:
        return ResourceRef(name)
    if name in scope.modules:
        return ModuleRef(name)
    raise BicepEvalError(f"{scope.file}: {name!r} is not declared")


def _known(*values: Any) -> bool:
    return not any(isinstance(v, Unknown | ResourceRef | ModuleRef) for v in values)


def _eval(node: Node, scope: _Scope, loop: dict[str, Any]) -> Any:
    kind = node.type
    if kind == "string":
        parts: list[Any] = []
        for child in node.children:
            if child.type == "string_content":
                parts.append(_text(child))
            elif child.type == "escape_sequence":
                parts.append({"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\$": "$"}.get(_text(child), _text(child)[1:]))
            elif child.type == "interpolation":
                parts.append(_eval(child.named_children[0], scope, loop))
        if not _known(*parts):
            return Unknown(_text(node))
        return "".join(str(p).lower() if isinstance(p, bool) else str(p) for p in parts)
    if kind == "number":
        return int(_text(node))
    if kind == "boolean":
        return _text(node) == "true"
    if kind == "null":
        return None
    if kind == "object":
        result: dict[Any, Any] = {}
        for prop in node.named_children:
            if prop.type != "object_property" or prop.named_children[0].type == "resource_declaration":
                continue
            key_node, value_node = prop.named_children[0], prop.named_children[-1]
            key = _eval(key_node, scope, loop) if key_node.type == "string" else _text(key_node)
            result[key] = _eval(value_node, scope, loop)
        return result
    if kind == "array":
        return [_eval(child, scope, loop) for child in node.named_children]
    if kind == "parenthesized_expression":
        return _eval(node.named_children[0], scope, loop)
    if kind == "identifier":
        return _lookup(_text(node), scope, loop)
    if kind == "resource_expression":
        return ResourceRef(_text(node))
    if kind == "member_expression":
        target = _eval(node.named_children[0], scope, loop)
        member = _text(node.named_children[-1])
        if isinstance(target, dict):
            if member not in target:
                raise BicepEvalError(f"{scope.file}: {_text(node)}: no property {member!r}")
            return target[member]
        return Unknown(_text(node))
    if kind == "subscript_expression":
        target = _eval(node.named_children[0], scope, loop)
        index = _eval(node.named_children[1], scope, loop)
        if not _known(target, index):
            return Unknown(_text(node))
        try:
            return target[index]
        except (KeyError, IndexError, TypeError) as exc:
            raise BicepEvalError(f"{scope.file}: {_text(node)}: {exc!r}") from exc
    if kind == "ternary_expression":
        test = _eval(node.named_children[0], scope, loop)
        if test is True:
            return _eval(node.named_children[1], scope, loop)
        if test is False:
            return _eval(node.named_children[2], scope, loop)
        return Unknown(_text(node))
    if kind == "unary_expression":
        operator = _text(node.children[0])
        value = _eval(node.named_children[0], scope, loop)
        if not _known(value):
            return Unknown(_text(node))
        return (not value) if operator == "!" else -value
    if kind == "binary_expression":
        return _binary(node, scope, loop)
    if kind == "call_expression":
        return _call(node, scope, loop)
    if kind == "for_statement":
        return _for(node, scope, loop)
    raise BicepEvalError(f"{scope.file}: cannot evaluate {kind}: {_text(node)[:60]}")


def _binary(node: Node, scope: _Scope, loop: dict[str, Any]) -> Any:
    left_node, right_node = node.named_children[0], node.named_children[-1]
    operator = _text(next(c for c in node.children if not c.is_named))
    left = _eval(left_node, scope, loop)
    if operator == "&&" and left is False:
        return False
    if operator == "||" and left is True:
        return True
    right = _eval(right_node, scope, loop)
    if not _known(left, right):
        return Unknown(_text(node))
    operations = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "=~": lambda a, b: str(a).lower() == str(b).lower(),
        "!~": lambda a, b: str(a).lower() != str(b).lower(),
        "&&": lambda a, b: a and b,
        "||": lambda a, b: a or b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a // b,
        "%": lambda a, b: a % b,
        "??": lambda a, b: b if a is None else a,
    }
    if operator not in operations:
        raise BicepEvalError(f"{scope.file}: operator {operator}")
    return operations[operator](left, right)


def _call(node: Node, scope: _Scope, loop: dict[str, Any]) -> Any:
    function = _text(node.named_children[0])
    args = [_eval(a, scope, loop) for a in node.named_children[1].named_children]
    deploy_time = {
        "guid", "uniqueString", "subscriptionResourceId", "resourceId", "tenantResourceId", "extensionResourceId",
        "resourceGroup", "subscription", "environment", "tenant", "deployment", "managementGroup", "utcNow",
        "newGuid", "reference", "listKeys",
    }  # fmt: skip
    if function in deploy_time:
        return Unknown(_text(node))
    if not _known(*args):
        return Unknown(_text(node))
    if function == "empty":
        return args[0] is None or len(args[0]) == 0
    if function == "union":
        if all(isinstance(a, dict) for a in args):
            merged: dict[str, Any] = {}
            for a in args:
                merged.update(a)
            return merged
        return [x for a in args for x in a if x not in a[: a.index(x)]]
    if function == "items":
        return [{"key": k, "value": v} for k, v in sorted(args[0].items(), key=lambda kv: str(kv[0]).lower())]
    if function == "min":
        return min(args)
    if function == "max":
        return max(args)
    if function == "toLower":
        return str(args[0]).lower()
    if function == "toUpper":
        return str(args[0]).upper()
    if function == "length":
        return len(args[0])
    if function == "contains":
        return args[1] in args[0]
    if function == "take":
        return args[0][: args[1]]
    if function == "concat":
        if all(isinstance(a, list) for a in args):
            return [x for a in args for x in a]
        return "".join(str(a) for a in args)
    if function == "string":
        return json.dumps(args[0]) if isinstance(args[0], dict | list) else str(args[0])
    if function == "int":
        return int(args[0])
    if function == "bool":
        return bool(args[0])
    raise BicepEvalError(f"{scope.file}: function {function}() is not supported by the evaluator")


def _for(node: Node, scope: _Scope, loop: dict[str, Any]) -> Any:
    named = node.named_children
    body = named[-1]
    if body.type == "if_statement":
        raise BicepEvalError(f"{scope.file}: filtered loops are not supported by the evaluator")
    variables = [_text(n) for n in named[:-2] if n.type == "identifier"]
    if named[0].type == "for_loop_parameters":
        variables = [_text(n) for n in named[0].named_children]
    iterable = _eval(named[-2], scope, loop)
    if not _known(iterable):
        # One representative element, so that the body still gets type-checked.
        inner = dict(loop, **{v: Unknown(v) for v in variables})
        return [_eval(body, scope, inner)]
    results = []
    for index, item in enumerate(iterable):
        inner = dict(loop)
        inner[variables[0]] = item
        if len(variables) > 1:
            inner[variables[1]] = index
        results.append(_eval(body, scope, inner))
    return results


# --- the type check ------------------------------------------------------------------------------------------


@cache
def _types_index() -> dict[str, tuple[Path, int]]:
    """'microsoft.web/sites@2024-04-01' -> (types.json, index of its ResourceType)."""
    index: dict[str, tuple[Path, int]] = {}
    for path in sorted(TYPES_DIR.rglob("types.json")):
        for i, entry in enumerate(_load(path)):
            if entry.get("$type") == "ResourceType":
                index.setdefault(entry["name"].lower(), (path, i))
    return index


@cache
def _load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def resource_type_known(type_: str, api_version: str) -> bool:
    return f"{type_}@{api_version}".lower() in _types_index()


def check_resource(resource: Deployed) -> list[str]:
    """Errors of one evaluated resource body against its type definition (empty when it conforms)."""
    where = f"{resource.file} {resource.symbol} ({resource.type}@{resource.api_version})"
    key = f"{resource.type}@{resource.api_version}".lower()
    if key not in _types_index():
        return [f"{where}: no type definition for this type and API version in {TYPES_DIR.relative_to(ROOT)}"]
    if resource.existing:
        return []
    path, index = _types_index()[key]
    types = _load(path)
    body = {k: v for k, v in resource.body.items() if k not in BICEP_KEYWORDS}
    errors: list[str] = []
    _check(types, types[index]["body"], body, "", errors)
    return [f"{where}: {e}" for e in errors]


def _resolve(types: list[dict[str, Any]], ref: Any) -> dict[str, Any]:
    if isinstance(ref, dict) and "$ref" in ref:
        return types[int(ref["$ref"].rsplit("/", 1)[1])]
    return ref  # type: ignore[no-any-return]


def _describe(types: list[dict[str, Any]], t: dict[str, Any]) -> str:
    kind = t["$type"]
    if kind == "StringLiteralType":
        return repr(t["value"])
    if kind == "UnionType":
        return " | ".join(_describe(types, _resolve(types, e)) for e in t["elements"])
    return {"StringType": "a string", "IntegerType": "an integer", "BooleanType": "a boolean",
            "ArrayType": "an array", "ObjectType": "an object", "DiscriminatedObjectType": "an object",
            "AnyType": "anything"}.get(kind, kind)  # fmt: skip


def _check(types: list[dict[str, Any]], ref: Any, value: Any, path: str, errors: list[str]) -> None:
    t = _resolve(types, ref)
    kind = t["$type"]
    at = path or "body"
    if value is None or isinstance(value, Unknown | ResourceRef | ModuleRef) or kind == "AnyType":
        return  # null omits the property; a deploy-time value is checked by Azure
    if kind == "StringType":
        if not isinstance(value, str):
            errors.append(f"{at}: {value!r} is not a string")
        else:
            if "minLength" in t and len(value) < t["minLength"]:
                errors.append(f"{at}: {value!r} is shorter than {t['minLength']}")
            if "maxLength" in t and len(value) > t["maxLength"]:
                errors.append(f"{at}: {value!r} is longer than {t['maxLength']}")
    elif kind == "StringLiteralType":
        if value != t["value"]:
            errors.append(f"{at}: {value!r} is not {t['value']!r}")
    elif kind == "UnionType":
        elements = [_resolve(types, e) for e in t["elements"]]
        for element in elements:
            trial: list[str] = []
            _check(types, element, value, path, trial)
            if not trial:
                return
        errors.append(f"{at}: {value!r} is not one of {_describe(types, t)}")
    elif kind == "IntegerType":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{at}: {value!r} is not an integer")
        else:
            if "minValue" in t and value < t["minValue"]:
                errors.append(f"{at}: {value} is below the minimum {t['minValue']}")
            if "maxValue" in t and value > t["maxValue"]:
                errors.append(f"{at}: {value} is above the maximum {t['maxValue']}")
    elif kind == "BooleanType":
        if not isinstance(value, bool):
            errors.append(f"{at}: {value!r} is not a boolean")
    elif kind == "ArrayType":
        if not isinstance(value, list):
            errors.append(f"{at}: {value!r} is not an array")
            return
        for i, item in enumerate(value):
            _check(types, t["itemType"], item, f"{path}[{i}]", errors)
    elif kind == "ObjectType":
        _check_object(types, t.get("properties", {}), t.get("additionalProperties"), value, path, errors)
    elif kind == "DiscriminatedObjectType":
        if not isinstance(value, dict):
            errors.append(f"{at}: {value!r} is not an object")
            return
        discriminator = t["discriminator"]
        tag = value.get(discriminator)
        if isinstance(tag, Unknown):
            return
        if tag not in t["elements"]:
            errors.append(f"{at}.{discriminator}: {tag!r} is not one of {sorted(t['elements'])}")
            return
        element = _resolve(types, t["elements"][tag])
        properties = dict(t.get("baseProperties", {}))
        properties.update(element.get("properties", {}))
        _check_object(types, properties, element.get("additionalProperties"), value, path, errors)
    else:
        errors.append(f"{at}: type {kind} is not known to the checker")


def _check_object(
    types: list[dict[str, Any]],
    properties: dict[str, Any],
    additional: Any,
    value: Any,
    path: str,
    errors: list[str],
) -> None:
    at = path or "body"
    if not isinstance(value, dict):
        errors.append(f"{at}: {value!r} is not an object")
        return
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, Unknown):
            if additional is None:
                errors.append(f"{at}: a computed property name where only {sorted(properties)} are allowed")
            else:
                _check(types, additional, item, f"{path}[{key.what}]", errors)
            continue
        if key in properties:
            spec = properties[key]
            if spec.get("flags", 0) & FLAG_READ_ONLY and item is not None:
                errors.append(f"{where}: read-only property (Azure sets it; a template must not)")
                continue
            _check(types, spec["type"], item, where, errors)
            continue
        close = [name for name in properties if name.lower() == str(key).lower()]
        if close:
            errors.append(f"{where}: unknown property; the definition spells it {close[0]!r}")
        elif additional is not None:
            _check(types, additional, item, where, errors)
        else:
            errors.append(f"{where}: unknown property (known here: {', '.join(sorted(properties))})")
    for key, spec in properties.items():
        flags = spec.get("flags", 0)
        if flags & FLAG_REQUIRED and not flags & FLAG_READ_ONLY and value.get(key) is None:
            errors.append(f"{path + '.' if path else ''}{key}: required property missing")


# --- parameter sweeps ----------------------------------------------------------------------------------------

REQUIRED_PARAMETERS = {"environmentName": "skill-dev"}  # parameters without a default
SAMPLE_STRINGS = {
    # Non-empty values for parameters whose empty default switches a branch off.
    "principalId": "00000000-0000-0000-0000-0000000000a1",
    "searchServicePrincipalId": "00000000-0000-0000-0000-0000000000b2",
    "searchServiceName": "srch-images",
    "searchServiceResourceGroup": "rg-search",
    "amlWorkspaceName": "mlw-labeling",
    "amlResourceGroup": "rg-ml",
    "amlSubscriptionId": "00000000-0000-0000-0000-0000000000c3",
    "amlExperimentName": "labeling_Training_0123abcd",
    "labelingStorageAccountName": "stlabeling",
    "labelingStorageResourceGroup": "rg-labeling-data",
    "labelingContainerName": "labeling-dataset",
}
SAMPLE_OBJECTS = {"appSettingOverrides": {"SKILL_DEFAULT_TOP_K": "3"}, "tags": {"team": "search"}}


def parameter_cases(file: str = "main.bicep") -> list[dict[str, Any]]:
    """Parameter sets that reach every branch: the defaults; each value of each `@allowed` parameter; each
    int parameter at its bounds; each parameter whose default is '' or {} set to a sample value; and all of
    those samples at once. Most branches depend on one parameter, which one parameter at a time covers; the few
    that need two (the deployer's role on a named search service, the cache roles of a given search identity)
    are reached by the case with every sample set."""
    cases: list[dict[str, Any]] = [{}]
    for name, info in parameters(file).items():
        values: Iterable[Any] = ()
        if "allowed" in info:
            values = info["allowed"]
        elif info["type"] == "int":
            values = [v for v in (info.get("minValue"), info.get("maxValue")) if v is not None]
        elif info.get("default") == "" and name in SAMPLE_STRINGS:
            values = [SAMPLE_STRINGS[name]]
        elif info.get("default") == {} and name in SAMPLE_OBJECTS:
            values = [SAMPLE_OBJECTS[name]]
        cases.extend({name: v} for v in values if v != info.get("default"))
    cases.append({**SAMPLE_STRINGS, **SAMPLE_OBJECTS})
    return [{**REQUIRED_PARAMETERS, **case} for case in cases]


def case_id(case: Mapping[str, Any]) -> str:
    varied = {k: v for k, v in case.items() if k not in REQUIRED_PARAMETERS}
    if not varied:
        return "defaults"
    if len(varied) > 3:
        return "all-optional-parameters-set"
    return ",".join(f"{k}={v}" for k, v in varied.items())
