"""A model bundle's file names, the bundled sample's folder and the manifest writer: what the model store's
readers need without loading a model (shared.bundle.loader imports numpy and the ONNX reader; the cold start's
prefetch does not wait for them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.core.settings import APP_ROOT

MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"
SETTINGS_FILE = "settings.json"
SCORING_FILE = "scoring_file_v_1_0_0.py"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "model.pt"

# The bundled default model: EfficientNet-Lite0 with ImageNet weights, in AutoML's layout (docs/models.md).
SAMPLE_BUNDLE = APP_ROOT / "model_cache" / "sample"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` into the folder (sorted keys, trailing newline) and return its path."""
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
