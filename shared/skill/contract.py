"""The Azure AI Search custom Web API skill contract (docs/skill.md): parse a request, answer every record.

A request is `{"values": [{"recordId": "0", "data": {"image": ...}}, ...]}`; the answer has exactly one
`{"recordId", "data", "errors", "warnings"}` per record. A bad record gets its own error and never fails
its neighbours; only a bad envelope (not JSON, no values list, bad or duplicate recordIds, bad query
parameters) or a body over the limit answers the whole request with 400 or 413.
"""

from __future__ import annotations

import binascii
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pybase64

from shared.core.errors import ImageError, InvalidEnvelope, PayloadTooLarge
from shared.inference.model import ImageLoader, ImageOutcome
from shared.skill import bodyjson

# Input names, in the order they are looked up: ours, the older PowerSkill's, and raw file data.
INPUT_NAMES = ("image", "images", "file_data")
MAX_TOP_K = 1000
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,")
_WHITESPACE = re.compile(r"\s+")
# A URL, never base64: ':' and '/' after a scheme are outside the base64 alphabet's usual run.
_URL = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class SkillRecord:
    """One request record: its id and either a loader for its image bytes or the error that replaces it."""

    record_id: str
    loader: ImageLoader | None
    error: str | None


@dataclass(frozen=True)
class QueryOptions:
    top_k: int | None
    threshold: float | None
    embedding: bool = False


def parse_query(query: Mapping[str, str]) -> QueryOptions:
    """`topK` (1-1000), `threshold` (0-1) and `embedding` (true or false) from the skill URI; InvalidEnvelope
    for a bad value."""
    top_k: int | None = None
    threshold: float | None = None
    raw_k = query.get("topK")
    if raw_k not in (None, ""):
        try:
            top_k = int(raw_k)  # type: ignore[arg-type]
        except ValueError:
            top_k = 0
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidEnvelope(f"query parameter topK must be an integer from 1 to {MAX_TOP_K}, got {raw_k!r}")
    raw_t = query.get("threshold")
    if raw_t not in (None, ""):
        try:
            threshold = float(raw_t)  # type: ignore[arg-type]
        except ValueError:
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            raise InvalidEnvelope(f"query parameter threshold must be a number from 0 to 1, got {raw_t!r}")
    raw_e = query.get("embedding")
    embedding = False
    if raw_e not in (None, ""):
        if str(raw_e).lower() not in ("true", "false"):
            raise InvalidEnvelope(f"query parameter embedding must be true or false, got {raw_e!r}")
        embedding = str(raw_e).lower() == "true"
    return QueryOptions(top_k=top_k, threshold=threshold, embedding=embedding)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a string"


def _base64_loader(text: str, max_bytes: int) -> ImageLoader:
    """Decode lazily, in the batch's decode pool, after checking the size the base64 text implies."""

    def load() -> bytes:
        body = _DATA_URL.sub("", text, count=1)
        implied = len(body) * 3 // 4 - body[-2:].count("=")
        if implied > max_bytes:
            raise ImageError(f"image is about {implied:,} bytes; the limit is {max_bytes:,} bytes")
        try:
            # pybase64 (libbase64, SIMD) decodes and validates strictly (alphabet, padding only at the end) in
            # about 0.07 ms for a 440 kB image where binascii takes about 2 ms holding the GIL, which the other
            # decode threads wait for.
            return pybase64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            pass
        try:
            # Line-wrapped base64 (MIME style) is still base64.
            return pybase64.b64decode(_WHITESPACE.sub("", body), validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("image data is not valid base64") from None

    return load


def _record_input(data: Any, max_image_bytes: int) -> tuple[ImageLoader | None, str | None]:
    if not isinstance(data, dict):
        return None, f'record has no "data" object (got {_describe(data)})'
    name = next((n for n in INPUT_NAMES if data.get(n) is not None), None)
    if name is None:
        return None, 'record has no image: "data" needs "image" (or "images", "file_data") holding an image'
    value = data[name]
    if isinstance(value, str):
        if _URL.match(value):
            return None, (
                f'input "{name}" is a URL; images are not fetched by URL: map /document/normalized_images/* '
                "(imageAction generateNormalizedImages) or /document/file_data, or send the image as base64"
            )
        return _base64_loader(value, max_image_bytes), None
    if isinstance(value, dict):
        payload = value.get("data")
        if isinstance(payload, str):
            return _base64_loader(payload, max_image_bytes), None
        if payload is None and value.get("url"):
            return None, (
                f'input "{name}" has a url but no "data"; images are not fetched by URL: map '
                "/document/normalized_images/* (imageAction generateNormalizedImages) or /document/file_data"
            )
        return None, f'input "{name}" is an object without a base64 string in "data"'
    if isinstance(value, list):
        return None, (
            f'input "{name}" is a list; classify one image per record by setting the skill\'s context to '
            "/document/normalized_images/*"
        )
    return None, (
        f'input "{name}" must be a normalized image object, a file object {{"$type": "file", "data": ...}} or a '
        f"base64 string; got {_describe(value)}"
    )


def parse_request(body: bytes, *, max_request_bytes: int, max_records: int, max_image_bytes: int) -> list[SkillRecord]:
    """Validate the envelope and turn each record into a SkillRecord. Raises InvalidEnvelope/PayloadTooLarge."""
    if len(body) > max_request_bytes:
        raise PayloadTooLarge(
            f"request body is {len(body):,} bytes; the limit is {max_request_bytes:,} bytes "
            "(SKILL_MAX_REQUEST_BYTES); lower the skillset's batchSize"
        )
    if not body.strip():
        raise InvalidEnvelope('request body is empty; send a JSON object with a "values" list of records')
    try:
        envelope = bodyjson.loads(body)
    except RecursionError:
        # json.loads recurses once per level and fails near 1,000 levels; a skill request nests 5.
        raise InvalidEnvelope(
            f"request body nests JSON arrays or objects too deeply to parse (the limit is about "
            f"{sys.getrecursionlimit():,} levels; a skill request needs 5)"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidEnvelope(f"request body is not valid JSON{where}") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("values"), list):
        raise InvalidEnvelope('request body must be a JSON object with a "values" list of records')
    values: list[Any] = envelope["values"]
    if len(values) > max_records:
        raise PayloadTooLarge(
            f"request has {len(values):,} records; the limit is {max_records:,} (SKILL_MAX_RECORDS); "
            "lower the skillset's batchSize"
        )
    records: list[SkillRecord] = []
    seen: dict[str, int] = {}
    for index, value in enumerate(values):
        if not isinstance(value, dict):
            raise InvalidEnvelope(f"values[{index}] must be an object with a recordId, got {_describe(value)}")
        record_id = value.get("recordId")
        if not isinstance(record_id, str) or record_id == "":
            if "recordId" not in value:
                raise InvalidEnvelope(
                    f'values[{index}] has no "recordId": each record needs one, a non-empty string unique in the batch'
                )
            got = "an empty string" if record_id == "" else _describe(record_id)
            raise InvalidEnvelope(f'values[{index}] needs a "recordId" that is a non-empty string, got {got}')
        if record_id in seen:
            raise InvalidEnvelope(
                f"recordId {record_id!r} appears more than once (values[{seen[record_id]}] and values[{index}])"
            )
        seen[record_id] = index
        loader: ImageLoader | None
        error: str | None
        if "data" not in value:
            loader, error = None, 'record has no "data" object: send {"recordId": ..., "data": {"image": ...}}'
        else:
            loader, error = _record_input(value["data"], max_image_bytes)
        records.append(SkillRecord(record_id=record_id, loader=loader, error=error))
    return records


def _messages(texts: tuple[str, ...] | list[str]) -> list[dict[str, str]] | None:
    return [{"message": t} for t in texts] if texts else None


def response_values(records: list[SkillRecord], outcomes: dict[str, ImageOutcome]) -> list[dict[str, Any]]:
    """One answer per record, in request order; `data` is `{}` whenever there are errors."""
    answers: list[dict[str, Any]] = []
    for record in records:
        if record.error is not None:
            answers.append(
                {"recordId": record.record_id, "data": {}, "errors": _messages([record.error]), "warnings": None}
            )
            continue
        outcome = outcomes[record.record_id]
        answers.append(
            {
                "recordId": record.record_id,
                "data": outcome.data if not outcome.errors and outcome.data is not None else {},
                "errors": _messages(outcome.errors),
                "warnings": _messages(outcome.warnings),
            }
        )
    return answers


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()
