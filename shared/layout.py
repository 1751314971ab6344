"""A model bundle's file names and its manifest: what the Blob store's readers need without loading a model.

shared.bundle (which imports numpy and the ONNX reader) re-exports them; the cold start's prefetch reads a
version through shared.store, which imports only this, so its first request does not wait for numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"
SETTINGS_FILE = "settings.json"
SCORING_FILE = "scoring_file_v_1_0_0.py"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "model.pt"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` into the folder (sorted keys, trailing newline) and return its path."""
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
