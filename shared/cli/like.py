"""`query --like PHOTO`: embed a local photo exactly as /api/vectorize does and print the index's nearest documents
(shared.search.similar; docs/vectors.md)."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from shared.core.errors import AppError
from shared.core.settings import Settings


class LikeError(AppError):
    """`query --like` cannot go on; one line."""


def add_like_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `query --like` (the query command's parser gets them)."""
    parser.add_argument("--like", metavar="PHOTO", help="find the documents whose images look like this local photo")
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="with --like: embed with this bundle or AutoML run folder (default: the model the vectorizer uses)",
    )
    parser.add_argument("--index", metavar="NAME", help="the index to query (default SEARCH_INDEX_NAME)")
    parser.add_argument(
        "--search-endpoint", metavar="URL", help="https://<service>.search.windows.net (default SEARCH_ENDPOINT)"
    )
    parser.add_argument("--top", type=int, default=5, metavar="N", help="how many documents (default 5)")


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


def run_like(args: argparse.Namespace, settings: Settings) -> int:
    """Embed `--like PHOTO`, query the index with the vector, print one line per nearest document."""
    from shared.search import client as searchclient
    from shared.search.similar import nearest
    from shared.search.templates import search_endpoint_url

    endpoint = getattr(args, "search_endpoint", None) or settings.search_endpoint
    if not endpoint:
        raise LikeError(
            "no search service: pass --search-endpoint https://<service>.search.windows.net or set SEARCH_ENDPOINT"
        )
    top = int(getattr(args, "top", 5) or 5)
    if not 1 <= top <= 1000:
        raise LikeError(f"--top must be from 1 to 1000, got {top}")
    photo = Path(args.like)
    vector, version = embed_photo(photo, settings, Path(args.model) if getattr(args, "model", None) else None)
    index = getattr(args, "index", None) or settings.search_index_name
    credential = searchclient.credential(settings.search_admin_key, settings.azure_client_id)
    hits = nearest(search_endpoint_url(endpoint), credential, index, vector, top=top)
    out = sys.stdout
    out.write(f"nearest to {photo} (model {version}, {len(vector)} dimensions) in index {index}:\n")
    if not hits:
        out.write("no documents with an image vector yet (has the indexer run with the skill's embedding?)\n")
        return 0
    width = max(len("name"), *(len(h.name) for h in hits))
    out.write(f"{'score':<8}{'name':<{width + 2}}labels\n")
    for hit in hits:
        out.write(f"{hit.score:<8.4f}{hit.name:<{width + 2}}{', '.join(hit.labels) or '-'}\n")
    return 0
