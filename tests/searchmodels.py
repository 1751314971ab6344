"""Check a search object (data source, index, skillset, indexer) as sent to the REST API against the models of
the azure-search-documents package installed here: every key known to the model, required fields present,
enum values valid, read-only fields unset, values of the right JSON type.

The installed azure-search-documents 12.0.0 is generated from the service's TypeSpec for REST API 2026-04-01
(`azure.search.documents.indexes.models`, models built on `rest_field`), the version search-setup's SDK calls
send, so the check matches what the service is asked to accept. Properties only preview versions have (the
indexer's `cache`) are unknown here: tests/search/test_templates.py checks them apart. Polymorphic objects
are resolved through the model's discriminator (`@odata.type`) and the base class's `__mapping__`, as the SDK
deserializes them.
"""

from __future__ import annotations

import datetime
import enum
import re
import types
import typing
from functools import cache
from typing import Any

import azure.search.documents.indexes.models as _public
import azure.search.documents.indexes.models._enums as _enums
import azure.search.documents.indexes.models._models as _models

# The top-level object of each REST resource search-setup writes.
MODELS: dict[str, type] = {
    "datasource": _models.SearchIndexerDataSourceConnection,
    "index": _models.SearchIndex,
    "skillset": _models.SearchIndexerSkillset,
    "indexer": _models.SearchIndexer,
}
# Models that are dictionaries on the wire ("additionalProperties" in the REST spec), which the generated classes
# do not record: name -> type of their values.
OPEN_MODELS: dict[type, Any] = {_models.WebApiHttpHeaders: str}
# An ISO 8601 duration, the wire form of a timedelta (e.g. a skill's "timeout": "PT230S").
_DURATION = re.compile(r"-?P(?!$)(\d+(\.\d+)?D)?(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?")


def _namespace() -> dict[str, Any]:
    namespace = dict(vars(_models))
    namespace.update({"_models": _public, "_enums": _enums})
    return namespace


@cache
def fields(model: type) -> dict[str, tuple[Any, bool, bool]]:
    """rest name -> (annotation, required, read-only) of a model class, inherited fields included."""
    hints = typing.get_type_hints(model, globalns=_namespace())
    found: dict[str, tuple[Any, bool, bool]] = {}
    for klass in reversed(model.__mro__):
        for attr, value in vars(klass).items():
            if attr.startswith("_") or not hasattr(value, "_rest_name_input"):
                continue
            annotation = hints.get(attr, Any)
            rest_name = value._rest_name_input or attr
            required = not _optional(annotation)
            read_only = value._visibility == ["read"]
            found[rest_name] = (annotation, required, read_only)
    return found


def _optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def check(kind: str, body: Any) -> list[str]:
    """Errors of one rendered object (`kind` a key of MODELS); empty when it conforms."""
    errors: list[str] = []
    _check_value(MODELS[kind], body, kind, errors)
    return errors


def _check_value(annotation: Any, value: Any, path: str, errors: list[str]) -> None:
    if value is None:
        if not _optional(annotation) and annotation is not Any:
            errors.append(f"{path}: null where {_name(annotation)} is required")
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        enums = [a for a in members if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and str in members:
            allowed = sorted({e.value for enum_type in enums for e in enum_type})
            if _enums.SearchFieldDataType in enums and isinstance(value, str):
                # A collection field's type is Collection(<type>) (SearchFieldDataType.Collection() builds it).
                match = re.fullmatch(r"Collection\((.+)\)", value)
                value = match.group(1) if match else value
            if value not in allowed:
                errors.append(f"{path}: {value!r} is not one of {allowed}")
            return
        trials = []
        for member in members:
            trial: list[str] = []
            _check_value(member, value, path, trial)
            if not trial:
                return
            trials.append(trial)
        errors.extend(min(trials, key=len))
        return
    if origin is typing.Literal:
        if value not in args:
            errors.append(f"{path}: {value!r} is not {' or '.join(map(repr, args))}")
        return
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: {value!r} is not a list")
            return
        for i, item in enumerate(value):
            _check_value(args[0], item, f"{path}[{i}]", errors)
        return
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: {value!r} is not an object")
            return
        for key, item in value.items():
            _check_value(args[1], item, f"{path}.{key}", errors)
        return
    if annotation is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: {value!r} is not a boolean")
        return
    if annotation is int:
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: {value!r} is not an integer")
        return
    if annotation is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append(f"{path}: {value!r} is not a number")
        return
    if annotation is str:
        if not isinstance(value, str):
            errors.append(f"{path}: {value!r} is not a string")
        return
    if annotation is datetime.timedelta:
        if not isinstance(value, str) or not _DURATION.fullmatch(value):
            errors.append(f"{path}: {value!r} is not an ISO 8601 duration such as 'PT230S'")
        return
    if annotation is datetime.datetime:
        if not isinstance(value, str):
            errors.append(f"{path}: {value!r} is not a date-time string")
        return
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = sorted(e.value for e in annotation)
        if value not in allowed:
            errors.append(f"{path}: {value!r} is not one of {allowed}")
        return
    if isinstance(annotation, type) and issubclass(annotation, _models._Model):
        _check_model(annotation, value, path, errors)
        return
    errors.append(f"{path}: the checker does not know the type {annotation!r}")


def _discriminated(model: type, value: dict[str, Any], path: str, errors: list[str]) -> type | None:
    mapping = getattr(model, "__mapping__", None)
    if not mapping:
        return model
    discriminator = next(
        (
            v._rest_name_input
            for klass in model.__mro__
            for v in vars(klass).values()
            if getattr(v, "_is_discriminator", False)
        ),
        None,
    )
    if discriminator is None:
        return model
    tag = value.get(discriminator)
    if tag is None:
        errors.append(f"{path}.{discriminator}: required property missing (one of {sorted(mapping)})")
        return None
    if tag not in mapping:
        errors.append(f"{path}.{discriminator}: {tag!r} is not one of {sorted(mapping)}")
        return None
    chosen: type = mapping[tag]
    # A subtype may itself be polymorphic (a second discriminator); resolve it the same way.
    if chosen is not model and getattr(chosen, "__mapping__", None) not in (None, mapping):
        return _discriminated(chosen, value, path, errors)
    return chosen


def _check_model(model: type, value: Any, path: str, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append(f"{path}: {value!r} is not an object")
        return
    if model in OPEN_MODELS:
        for key, item in value.items():
            _check_value(OPEN_MODELS[model], item, f"{path}.{key}", errors)
        return
    concrete = _discriminated(model, value, path, errors)
    if concrete is None:
        return
    known = fields(concrete)
    for key, item in value.items():
        where = f"{path}.{key}"
        if key not in known:
            close = [name for name in known if name.lower() == key.lower()]
            hint = f"; the model spells it {close[0]!r}" if close else f" (known: {', '.join(sorted(known))})"
            errors.append(f"{where}: unknown property of {concrete.__name__}{hint}")
            continue
        annotation, _, read_only = known[key]
        if read_only:
            errors.append(f"{where}: read-only property of {concrete.__name__}")
            continue
        _check_value(annotation, item, where, errors)
    for key, (_, required, read_only) in known.items():
        if required and not read_only and key not in value:
            errors.append(f"{path}.{key}: required property of {concrete.__name__} missing")


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", repr(annotation))
