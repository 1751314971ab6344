"""What several command groups share: argument types, the model store, and a model.pt-only run's conversion."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.core.settings import Settings
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.errors import StoreError


def converting(model_pt: Path) -> None:
    """Say on a terminal that a conversion has started: it prints nothing else for a minute or more."""
    if sys.stderr.isatty():
        sys.stderr.write(f"converting {model_pt} to ONNX (rebuild, export, parity check: a minute or more)...\n")
        sys.stderr.flush()


def servable(path: Path, settings: Settings) -> Path:
    """The folder itself, or, for a run that only has a usable model.pt, its converted ONNX bundle."""
    from shared.refresh.checkpoint import servable_folder

    return servable_folder(path, settings.model_cache_dir(), on_convert=converting)


def open_store(settings: Settings) -> BlobModelStore:
    """The configured model store; StoreError saying which settings to set when there is none."""
    store = BlobModelStore.from_settings(settings)
    if store is None:
        raise StoreError(
            "no model store is configured: set MODEL_BLOB_CONNECTION_STRING (Azurite, development) or "
            "MODEL_BLOB_ACCOUNT_URL (Azure, with a managed identity or `az login`)"
        )
    return store


def _whole_number_from(raw: str, minimum: int) -> int:
    # ArgumentTypeError, never ValueError: argparse would name the type function in its message.
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, {minimum} or more, got {raw!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {raw!r}")
    return value


def positive_int(raw: str) -> int:
    return _whole_number_from(raw, 1)


def probability(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {raw!r}")
    return value


def whole_number(raw: str) -> int:
    return _whole_number_from(raw, 0)


def days(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, 0 or more, got {raw!r}") from None
    if not 0 <= value <= 36_500:
        raise argparse.ArgumentTypeError(f"must be from 0 to 36500 days, got {raw!r}")
    return value
