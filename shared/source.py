"""Where the holder's models come from: the interface between `holder` (above) and `store` (below).

Both import this module and neither imports the other, so the model store depends on nothing above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.errors import ClassifierError


class SourceUnreachable(ClassifierError):
    """The source did not answer (network, DNS, emulator stopped); the holder reports it in health."""


@dataclass(frozen=True)
class Fetched:
    """A verified bundle folder on local disk.

    `token` is what the source needs to tell later whether anything changed (the pointer's ETag); `origin`
    describes where it came from, for health; `digest` identifies the exact content the source offered
    (the manifest's sha256), so a version that failed to load is not fetched again until it changes.
    `unreachable` is set when the source could not be asked and this is the copy it served last: the
    model may be out of date, and health must say so.
    """

    path: Path
    version: str | None
    token: str | None
    origin: str
    digest: str | None = None
    unreachable: str | None = None


class ModelSource(Protocol):
    description: str
    polls: bool

    def fetch(self, token: str | None) -> Fetched | None:
        """The model to serve, or None when nothing changed since `token`. Raises ClassifierError
        (SourceUnreachable when the source did not answer)."""

    def served(self, fetched: Fetched) -> None:
        """`fetched` loaded and answered a smoke inference: it may be served again at a cold start."""

    def rejected(self, fetched: Fetched, message: str) -> None:
        """`fetched` could not be loaded: do not offer the same content again until the source changes."""


class FolderSource:
    """A fixed local folder: AZUREML_MODEL_DIR, or the bundled sample."""

    polls = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)

    def fetch(self, token: str | None) -> Fetched | None:
        if token is not None:
            return None
        return Fetched(path=self.path, version=None, token="folder", origin=self.description)

    def served(self, fetched: Fetched) -> None:
        return None

    def rejected(self, fetched: Fetched, message: str) -> None:
        return None
