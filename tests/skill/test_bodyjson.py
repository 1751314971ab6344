"""shared.skill.bodyjson.loads is json.loads: the same value for every body, the same error for every bad one."""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.skill import bodyjson

# Long strings of the kinds a body holds: base64 (cut out), and ones json must handle itself because they
# hold an escape, a control character or non-ASCII text.
_PIECES = st.sampled_from(["QUJD", "/+9j", "ab==", "x", " ", "\x7f", "\t", "\n", '"', "\\", "é", "\u2028", "\ud800"])
_LONG = st.builds(
    lambda piece, n, head: head + piece * n,
    _PIECES,
    st.integers(bodyjson.LONG // 4, bodyjson.LONG // 2 + 10),
    st.sampled_from(["", "data:image/jpeg;base64,", "a"]),
)
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8) | _LONG
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | _LONG, inner, max_size=4),
    max_leaves=12,
)
_BASE64 = st.builds(lambda n: base64.b64encode(bytes(range(256)) * n).decode(), st.integers(bodyjson.LONG // 256, 40))
# A skill request's shape, with any value beside the image.
_ENVELOPES = st.builds(
    lambda images, extra: {
        "values": [{"recordId": str(i), "data": {"image": {"data": d}, "x": extra}} for i, d in enumerate(images)]
    },
    st.lists(_BASE64, min_size=1, max_size=3),
    _VALUES,
)
_BODIES = st.one_of(_VALUES, _ENVELOPES, _ENVELOPES)
_DUMPS = st.sampled_from(
    [
        {},
        {"ensure_ascii": False},
        {"separators": (",", ":")},
        {"indent": 2},
        {"ensure_ascii": False, "indent": "\t"},
        {"escape_plus": "\\u002B"},
        {"escape_plus": "\\u002b", "separators": (",", ":")},
    ]
)


def _escaped(text: str, plus: str = "\\u002B") -> str:
    """`text` as serializers that escape `/` and `+` write it (.NET's System.Text.Json escapes `+` by
    default). `/` appears only inside strings; a `+` after an e is left alone, since it may be an exponent."""
    return re.sub(r"(?<![eE])\+", lambda _: plus, text.replace("/", "\\/"))


def _body(value: Any, options: dict[str, Any]) -> bytes:
    options = dict(options)
    plus = options.pop("escape_plus", None)
    text = json.dumps(value, **options)
    return (_escaped(text, plus) if plus else text).encode("utf-8", "surrogatepass")


def _outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "value", parse(body)
    except Exception as exc:  # noqa: BLE001 - the comparison is of whatever json raises
        return "error", (type(exc), str(exc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODIES, _DUMPS)
def test_every_value_comes_back_as_json_loads_gives_it(value: Any, options: dict[str, Any]) -> None:
    body = _body(value, options)
    got, expected = bodyjson.loads(body), json.loads(body)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # also the order of keys, and no float/int confusion


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODIES, _DUMPS, st.data())
def test_a_damaged_body_gives_what_json_loads_gives(value: Any, options: dict[str, Any], data: st.DataObject) -> None:
    body = _body(value, options)
    at = data.draw(st.integers(0, len(body)))
    damage = data.draw(st.sampled_from(["cut", "insert", "replace"]))
    byte = data.draw(st.sampled_from([b'"', b"\\", b"{", b"]", b",", b"\x00", b"\xff", b"A", b" "]))
    if damage == "cut":
        body = body[:at]
    elif damage == "insert":
        body = body[:at] + byte + body[at:]
    else:
        body = body[:at] + byte + body[at + 1 :]
    assert _outcome(bodyjson.loads, body) == _outcome(json.loads, body)


def _skill_body(records: int, image_bytes: int = 300_000) -> tuple[bytes, list[str]]:
    images = [base64.b64encode(os.urandom(image_bytes)).decode() for _ in range(records)]
    values = [
        {"recordId": str(i), "data": {"image": {"$type": "file", "data": data, "width": 2000, "url": None}}}
        for i, data in enumerate(images)
    ]
    return json.dumps({"values": values}).encode(), images


def test_a_skill_body_is_parsed_from_its_few_kilobytes_around_the_images() -> None:
    body, images = _skill_body(16)
    cut = bodyjson._cut_long_strings(body)
    assert cut is not None
    text, marker, strings = cut
    assert strings == images
    assert len(text) < 5_000  # json.loads reads the records' fields, not 5.4 MB of base64
    assert marker.encode() in text
    assert bodyjson.loads(body) == json.loads(body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'["' + b"A" * bodyjson.LONG + b'\\""]', "a string ending in an escaped quote"),
        (b'["' + b"A" * bodyjson.LONG + b'\\\\"]', "a string ending in an escaped backslash"),
        (b'["' + b"A" * bodyjson.LONG + b'\x01"]', "a control character, which json refuses"),
        (('["' + "é" * bodyjson.LONG + '"]').encode(), "non-ASCII text"),
        (b'["' + b"A" * bodyjson.LONG, "a string that never ends"),
        (json.dumps(["a"] * (bodyjson.MAX_STRINGS + 1) + ["A" * bodyjson.LONG]).encode(), "many short strings"),
        (b'["' + b"A" * (bodyjson.LONG - 1) + b'"]', "no string long enough to cut"),
    ],
)
def test_bodies_this_path_does_not_cut_are_left_to_json(body: bytes, why: str) -> None:
    assert bodyjson._cut_long_strings(body) is None, why
    assert _outcome(bodyjson.loads, body) == _outcome(json.loads, body)


@pytest.mark.parametrize("plus", ["\\u002B", "\\u002b"])
def test_base64_with_escapes_is_left_to_json(plus: str) -> None:
    # .NET's System.Text.Json writes + as \u002B by default. json's own scanner reading each such string
    # measured no faster than json.loads reading the body (0.996x one request at a time, 0.963x four at once).
    body, images = _skill_body(4)
    body = _escaped(body.decode(), plus).encode()
    assert body.count(plus.encode()) > 100 and body.count(b"\\/") > 100
    assert bodyjson._cut_long_strings(body) is None
    assert bodyjson.loads(body) == json.loads(body)
    assert [v["data"]["image"]["data"] for v in bodyjson.loads(body)["values"]] == images


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32-le"])
def test_other_encodings_json_accepts_are_parsed_by_json(encoding: str) -> None:
    body = json.dumps({"values": ["A" * bodyjson.LONG]}).encode(encoding)
    assert bodyjson.loads(body) == json.loads(body) == {"values": ["A" * bodyjson.LONG]}


def test_a_string_that_only_looks_like_a_cut_out_one_is_left_as_it_is() -> None:
    body, _ = _skill_body(2, 3_000)
    tree = json.loads(body)
    tree["values"][0]["recordId"] = "long-string-00000000000000000000000000000000-0"
    body = json.dumps(tree).encode()
    assert bodyjson.loads(body) == tree


def test_the_skill_contract_parses_a_request_without_reading_its_images_with_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.skill.contract import parse_request

    body, images = _skill_body(16)
    read: list[int] = []
    loads = json.loads

    def counting(text: Any, **kwargs: Any) -> Any:
        read.append(len(text))
        return loads(text, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    records = parse_request(body, max_request_bytes=len(body), max_records=16, max_image_bytes=400_000)
    assert [base64.b64encode(r.loader()).decode() for r in records if r.loader] == images
    assert read and max(read) < 5_000, read


def _deepest_json_parses() -> int:
    depth = 2_000
    while True:
        try:
            json.loads("[" * depth + "]" * depth)
            return depth
        except RecursionError:
            depth -= 10


def test_a_body_nested_as_deep_as_json_allows_still_parses() -> None:
    depth = _deepest_json_parses() - 10
    body = ("[" * depth + json.dumps("A" * bodyjson.LONG) + "]" * depth).encode()
    assert bodyjson._cut_long_strings(body) is not None
    value = bodyjson.loads(body)
    for _ in range(depth):
        value = value[0]
    assert value == "A" * bodyjson.LONG
