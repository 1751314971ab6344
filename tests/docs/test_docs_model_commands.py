"""The shell commands of docs/model-store.md and docs/models.md, run as written against a real Azurite.

Each ```bash line of those pages runs through bash from the repository root, with the placeholders
(`path/to/...`, `photos/`, `VERSION`) replaced by real folders made here. What cannot run here is skipped by
name below, with the reason. `UseDevelopmentStorage=true` means Azurite on 127.0.0.1:10000; the test's own
Azurite listens on a free loopback port, so its connection string (same account, same key) stands in.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.azurite import Azurite
from tests.conftest import ROOT, SAMPLES
from tests.docs_commands import fenced_commands
from tests.modelfactory import scoring_file, tiny_bundle, tiny_classifier, write_labels

pytestmark = pytest.mark.integration  # see tests/conftest.py

SKIPPED = {
    "make azurite &": "the test starts its own Azurite (tests/azurite.py) on a free port",
    ".venv/bin/python -m shared serve": "a server that runs until stopped: tests/cli/test_devserver.py covers it",
    ".venv/bin/python -m shared refresh --dry-run": "needs an Azure ML workspace (tests/refresh/test_refresh.py "
    "fakes it)",
    ".venv/bin/python -m shared refresh": "needs an Azure ML workspace (tests/refresh/test_refresh.py fakes it)",
}


def automl_run(root: Path, seed: int) -> Path:
    """What an AutoML best child uploads, as the docs tell users to download it."""
    tiny_classifier(root / "train_artifacts" / "model.onnx", seed=seed)
    write_labels(root / "train_artifacts" / "labels.json", ["cat", "dog", "fox", "owl"])
    scoring_file(root / "outputs" / "scoring_file_v_1_0_0.py", "image-classification")
    return root


def run_page(page: str, places: dict[str, str], env: dict[str, str], azurite: Azurite) -> list[tuple[str, str]]:
    """Run every command of the page in order; returns (command, stdout) of those that ran."""
    ran = []
    for written in fenced_commands(page):
        if written in SKIPPED:
            continue
        if written.startswith("export "):
            name, _, value = written.removeprefix("export ").partition("=")
            env[name] = azurite.connection_string if value == "UseDevelopmentStorage=true" else value
            continue
        command = written
        for placeholder, real in places.items():
            command = command.replace(placeholder, real)
        assert "path/to" not in command and "VERSION" not in command, f"no stand-in for {written!r}"
        done = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"{written!r} failed:\n{done.stderr}"
        assert "Traceback" not in done.stderr and "error:" not in done.stderr, done.stderr
        ran.append((written, done.stdout))
        published = re.match(r"published (\S+) ", done.stdout)
        if published:
            places["VERSION"] = published.group(1)
    return ran


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AZURE", "AZUREML_"))}
    env["MODEL_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def test_the_model_store_page_runs_as_written(own_azurite: Azurite, tmp_path: Path) -> None:
    places = {
        "path/to/automl-run": str(automl_run(tmp_path / "automl-run", seed=1)),
        "path/to/downloaded-run": str(automl_run(tmp_path / "downloaded-run", seed=2)),
    }
    ran = run_page("model-store.md", places, base_env(tmp_path), own_azurite)
    outputs = [out for _, out in ran]
    assert len(ran) == 10
    assert outputs[0].startswith("no versions yet in http://127.0.0.1:")
    assert outputs[1].startswith("would upload version sample-1 to http://127.0.0.1:")
    assert outputs[1].endswith(
        "would point current.json to sample-1 (nothing is current yet)\nnothing was changed (--dry-run)\n"
    )
    assert outputs[2] == "published sample-1 (uploaded); current.json now points to it\n"
    assert ", not promoted: current.json still points to sample-1;" in outputs[3]
    assert outputs[4].startswith("versions in ")
    assert outputs[5] == f"current.json now points to {places['VERSION']} (was sample-1)\n"
    assert outputs[6] == f"current.json now points to sample-1 (was {places['VERSION']})\n"
    assert f"would delete {places['VERSION']} " in outputs[7] and "keep         sample-1 " in outputs[7]
    assert outputs[8].splitlines()[-1].startswith("deleted 1 of 2 versions (")
    assert ran[9][0] == ".venv/bin/python -m shared refresh --run-dir path/to/downloaded-run"


def test_the_models_page_runs_as_written(own_azurite: Azurite, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tests.checkpoints import automl_checkpoint

    run = tmp_path / "run"
    automl_checkpoint(run / "train_artifacts" / "model.pt", "mobilenetv2", ["cat", "dog"], crop=64, resize=72)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (photos / name).write_bytes((SAMPLES / name).read_bytes())
    places = {
        "path/to/folder": str(tiny_bundle(tmp_path / "folder")),
        "path/to/model.pt": str(run / "train_artifacts" / "model.pt"),
        "path/to/bundle": str(tmp_path / "bundle"),
        "path/to/run": str(run),
        "photos/": f"{photos}/",
    }
    env = base_env(tmp_path) | {"MODEL_BLOB_CONNECTION_STRING": own_azurite.connection_string}
    ran = run_page("models.md", places, env, own_azurite)
    assert [command.split()[3] for command, _ in ran] == ["classify", "classify", "convert", "classify", "publish"]
    assert ran[4][1].startswith("published m-")
