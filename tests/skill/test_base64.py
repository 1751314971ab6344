"""Base64 image data in skill records: what decodes, and the one message for everything that does not.

The decoding is pybase64's (issue 13); these rows pin that it accepts exactly what strict base64 allows
(RFC 4648 section 4: the standard alphabet, padding only at the end) plus a data: URL prefix and MIME line
breaks, and that every malformed string earns the same message as with binascii before it.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from shared.core.errors import ImageError
from shared.skill.contract import parse_request

RAW = os.urandom(3 * 1000 + 2)  # not a multiple of 3: the encoding ends in one "="
TEXT = base64.b64encode(RAW).decode()
NOT_BASE64 = "image data is not valid base64"


def load(text: str, max_bytes: int = 10_000_000) -> bytes:
    body = json.dumps({"values": [{"recordId": "0", "data": {"image": {"$type": "file", "data": text}}}]})
    (record,) = parse_request(body.encode(), max_request_bytes=10**8, max_records=10, max_image_bytes=max_bytes)
    assert record.loader is not None and record.error is None
    return record.loader()


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        "data:image/jpeg;base64," + TEXT,
        "\n".join(TEXT[i : i + 76] for i in range(0, len(TEXT), 76)),  # MIME line breaks
        "\r\n".join(TEXT[i : i + 64] for i in range(0, len(TEXT), 64)) + "\r\n",
    ],
    ids=["plain", "data-url", "mime-76", "crlf-64"],
)
def test_valid_base64_decodes_to_the_same_bytes(text: str) -> None:
    assert load(text) == RAW


@pytest.mark.parametrize(
    "text",
    [
        "!!not base64!!",
        TEXT[:-1],  # padding missing
        TEXT[:-2] + "=" + TEXT[-2],  # padding in the middle of the last quantum
        "=" + TEXT,  # leading padding
        TEXT + TEXT,  # data after padding
        # A whole quantum of "=" after unpadded data: binascii's strict mode decoded it, pybase64 refuses it.
        base64.b64encode(RAW[:3000]).decode() + "====",
        TEXT[:-4] + "-_" + TEXT[-2:],  # URL-safe alphabet
        TEXT[:100] + "\u00e9" + TEXT[101:],  # not ASCII
        TEXT[:100] + "\x00" + TEXT[101:],
        "Q",
        "Q===",
    ],
    ids=[
        "punctuation", "no-padding", "inner-padding", "leading-padding", "after-padding", "excess-padding",
        "urlsafe", "non-ascii", "nul", "one-char", "one-char-padded",
    ],
)  # fmt: skip
def test_invalid_base64_gets_one_message(text: str) -> None:
    with pytest.raises(ImageError) as caught:
        load(text)
    assert str(caught.value) == NOT_BASE64


def test_size_is_checked_before_decoding() -> None:
    with pytest.raises(ImageError) as caught:
        load(TEXT, max_bytes=1000)
    assert str(caught.value) == "image is about 3,002 bytes; the limit is 1,000 bytes"


def test_empty_string_decodes_to_no_bytes() -> None:
    # The image decoder then says "image is empty (0 bytes)"; base64 itself has nothing to object to.
    assert load("") == b""
