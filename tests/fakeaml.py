"""Fakes for the one thing that cannot run here, the AML service, shaped exactly like azureml-core's objects.

Only the members our code calls exist, with azureml-core's names and signatures: `Workspace.experiments`
(a dict of Experiment by name), `Experiment.name` and `get_runs(type=None, tags=None, properties=None,
include_children=False)` (newest first), and on a Run: `id`, `get_status()`, `get_tags()`,
`get_properties()`, `get_metrics(name=None, recursive=False, run_type=None, populate=False)`,
`get_children(recursive=False, tags=None, properties=None, type=None, status=None, _rehydrate_runs=True)`,
`get_file_names()` and `download_file(name, output_file_path=None, _validate_checksum=False)`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


class FakeRun:
    def __init__(
        self,
        run_id: str,
        *,
        status: str = "Completed",
        tags: dict[str, str] | None = None,
        properties: dict[str, str] | None = None,
        metrics: dict[str, Any] | None = None,
        children: list[FakeRun] | None = None,
        artifacts: Path | None = None,
        fail_on: str | None = None,
    ) -> None:
        self.id = run_id
        self._status = status
        self._tags = tags or {}
        self._properties = properties or {}
        self._metrics = metrics or {}
        self._children = children or []
        self._artifacts = artifacts
        self._fail_on = fail_on
        self.downloads: list[str] = []

    def get_status(self) -> str:
        return self._status

    def get_tags(self) -> dict[str, str]:
        return dict(self._tags)

    def get_properties(self) -> dict[str, str]:
        return dict(self._properties)

    def get_metrics(
        self, name: str | None = None, recursive: bool = False, run_type: str | None = None, populate: bool = False
    ) -> dict[str, Any]:
        return dict(self._metrics)

    def get_children(
        self,
        recursive: bool = False,
        tags: Any = None,
        properties: dict[str, str] | None = None,
        type: str | None = None,
        status: str | None = None,
        _rehydrate_runs: bool = True,
    ) -> Any:
        found: list[FakeRun] = []
        for child in self._children:
            found.append(child)
            if recursive:
                found.extend(child.get_children(recursive=True))
        if properties:
            found = [c for c in found if all(c._properties.get(k) == v for k, v in properties.items())]
        return iter(found)

    def get_file_names(self) -> list[str]:
        if self._artifacts is None:
            return []
        return sorted(p.relative_to(self._artifacts).as_posix() for p in self._artifacts.rglob("*") if p.is_file())

    def download_file(self, name: str, output_file_path: str | None = None, _validate_checksum: bool = False) -> None:
        self.downloads.append(name)
        if self._fail_on == name:
            raise ConnectionResetError(f"connection reset while downloading {name}")
        assert self._artifacts is not None and output_file_path is not None
        shutil.copyfile(self._artifacts / name, output_file_path)


class FakeExperiment:
    def __init__(self, name: str, runs: list[FakeRun]) -> None:
        self.name = name
        self._runs = runs

    def get_runs(
        self, type: str | None = None, tags: Any = None, properties: Any = None, include_children: bool = False
    ) -> Any:
        return iter(self._runs)


class FakeWorkspace:
    def __init__(self, experiments: list[FakeExperiment]) -> None:
        self._experiments = {e.name: e for e in experiments}

    @property
    def experiments(self) -> dict[str, FakeExperiment]:
        return dict(self._experiments)


def automl_child(run_id: str, artifacts: Path | None, score: float | None, **kwargs: Any) -> FakeRun:
    properties = {"runTemplate": "automl_child"}
    if score is not None:
        properties["score"] = str(score)
    return FakeRun(run_id, properties=properties, artifacts=artifacts, **kwargs)


def training_run(
    run_id: str,
    children: list[FakeRun],
    *,
    best: str | None = None,
    status: str = "Completed",
    primary_metric: str = "accuracy",
) -> FakeRun:
    """A labeling project's AutoML parent run; `best` sets the automl_best_child_run_id tag."""
    tags = {"automl_best_child_run_id": best} if best else {}
    # AutoML for images runs its trials under a HyperDrive run: the children sit one level down.
    hyperdrive = FakeRun(f"{run_id}_HD", children=children)
    return FakeRun(
        run_id, status=status, tags=tags, properties={"primary_metric": primary_metric}, children=[hyperdrive]
    )
