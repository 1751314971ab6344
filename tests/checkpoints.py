"""AutoML-format `model.pt` files built here: random weights, AutoML's key layout (docs/models.md) and `specs`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.refresh.checkpoint import build_network


def automl_checkpoint(
    path: Path,
    model_name: str,
    labels: list[str],
    *,
    multilabel: bool = False,
    crop: int = 224,
    resize: int = 256,
    score: float | None = 0.875,
    seed: int = 0,
) -> Path:
    """Write a checkpoint the way AutoML >= 1.40 does: architecture, class count, specs, state, optimizer,
    score and metrics (numpy objects, which is why it needs `weights_only=False`)."""
    import torch

    torch.manual_seed(seed)
    network = build_network(model_name, len(labels), crop)
    # Random heads start near zero (torchvision's N(0, 0.01)); spread them so that outputs, and so the
    # parity check, mean something.
    head = [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, 0.0, 0.2)
    torch.nn.init.normal_(head.bias, 0.0, 1.0)
    checkpoint: dict[str, Any] = {
        "model_name": model_name,
        "number_of_classes": len(labels),
        "specs": {
            "multilabel": multilabel,
            "model_settings": {"valid_resize_size": resize, "valid_crop_size": crop, "train_crop_size": crop},
            "labels": labels,
        },
        "model_state": network.state_dict(),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]},
        "metrics": {"accuracy": np.float64(score or 0.0), "per_label": np.zeros(len(labels))},
    }
    if score is not None:
        checkpoint["score"] = np.float64(score)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
