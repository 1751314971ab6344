"""`current.json`, the pointer to the version every instance serves, and the rules for version names.

```
<container>/<version>/model.onnx, labels.json, manifest.json, ...   immutable once the manifest exists
<container>/current.json  {"version", "manifest_sha256", "promoted", "metric"}
```
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.modelstore.errors import StoreError

if TYPE_CHECKING:
    from shared.bundle.loader import ModelBundle

POINTER = "current.json"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_VERSIONS = frozenset({"sample"})


@dataclass(frozen=True)
class Pointer:
    """`current.json` and the ETag it was read with."""

    version: str
    manifest_sha256: str
    promoted: str
    metric: dict[str, Any] | None
    etag: str


class Unchanged:
    """Returned by read_pointer when the pointer still has the ETag the caller knows."""


UNCHANGED = Unchanged()


def check_version_name(version: str) -> str:
    if not VERSION_PATTERN.match(version) or version in RESERVED_VERSIONS or version == POINTER:
        raise StoreError(
            f"version {version!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (and not {', '.join(sorted(RESERVED_VERSIONS))})"
        )
    return version


def utc_now() -> str:
    """The current UTC time as the store writes it: `%Y-%m-%dT%H:%M:%SZ`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_pointer(body: bytes, etag: str | None, description: str) -> Pointer:
    try:
        data = json.loads(body)
        return Pointer(
            version=check_version_name(str(data["version"])),
            manifest_sha256=str(data["manifest_sha256"]),
            promoted=str(data.get("promoted", "")),
            metric=data.get("metric"),
            etag=etag or "",
        )
    except (ValueError, KeyError, TypeError, StoreError):
        raise StoreError(f"{description}/{POINTER} is not a valid pointer") from None


def version_from_run_id(run_id: str) -> str | None:
    """A run id as a version name (AML run ids mostly are already), or None if nothing usable is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", run_id).strip("-._")[:64]
    if cleaned and VERSION_PATTERN.match(cleaned) and cleaned not in RESERVED_VERSIONS:
        return cleaned
    return None


def default_version(bundle: ModelBundle, source: dict[str, Any]) -> str:
    """From the run id when the source names one, else the content name (`m-` + 12 hex digits, the same
    name `classify` shows for the folder: shared.bundle.loader.content_version)."""
    run_id = source.get("run_id") if isinstance(source, dict) else None
    if isinstance(run_id, str) and run_id and (named := version_from_run_id(run_id)):
        return named
    from shared.bundle.loader import bundle_content_version

    return bundle_content_version(bundle)
