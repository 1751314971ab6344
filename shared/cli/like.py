"""`query --like PHOTO` (the options are shared.cli.query's): embed a local photo exactly as /api/vectorize does and
print the index's nearest documents (shared.search.similar; docs/vectors.md)."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from shared.core.errors import AppError
from shared.core.settings import Settings


class LikeError(AppError):
    """`query --like` cannot go on; one line."""


def embed_photo(photo: Path, settings: Settings, model: Path | None = None) -> tuple[list[float], str]:
    """The vector /api/vectorize answers for `photo` (the same model choice, decoding and preprocessing), and the
    model version it came from. Raises LikeError."""
    from shared.skill.service import SkillService

    try:
        data = photo.read_bytes()
    except OSError as exc:
        raise LikeError(f"cannot read {photo} ({exc.strerror or exc.__class__.__name__})") from None
    if model is not None:
        settings = dataclasses.replace(settings, model_dir=model, blob_connection_string=None, blob_account_url=None)
    service = SkillService(settings)
    body = json.dumps(
        {"values": [{"recordId": "0", "data": {"imageBinary": {"data": base64.b64encode(data).decode()}}}]}
    )
    status, answer, _ = service.vectorize(body.encode())
    payload: Any = json.loads(answer)
    if status != 200:
        raise LikeError(str(payload.get("error", {}).get("message", f"the vectorizer answered {status}")))
    (value,) = payload["values"]
    if value["errors"]:
        raise LikeError(f"{photo}: {value['errors'][0]['message']}")
    version = service.vector_model().version
    return list(value["data"]["vector"]), version


def run_like(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    """`query --like PHOTO`: embed the photo, query SEARCH_INDEX_NAME with the vector, print one line per nearest
    document (one JSON object per line with --json)."""
    from shared.search.query import IndexReader
    from shared.search.similar import nearest

    out = out or sys.stdout
    reader = IndexReader.from_settings(settings)
    photo = Path(args.like)
    vector, version = embed_photo(photo, settings, Path(args.model) if getattr(args, "model", None) else None)
    hits = nearest(reader, vector, top=int(args.top))
    if getattr(args, "json", False):
        for hit in hits:
            out.write(json.dumps(hit.as_json()) + "\n")
        return 0
    out.write(f"nearest to {photo} (model {version}, {len(vector)} dimensions) in index {reader.index}:\n")
    if not hits:
        out.write("no documents with an image vector yet (has the indexer run with the skill's embedding?)\n")
        return 0
    width = max(len("name"), *(len(h.name) for h in hits))
    out.write(f"{'score':<8}{'name':<{width + 2}}labels\n")
    for hit in hits:
        out.write(f"{hit.score:<8.4f}{hit.name:<{width + 2}}{', '.join(hit.labels) or '-'}\n")
    return 0
