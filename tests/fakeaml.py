"""Fakes for the one thing that cannot run here, the Azure ML service, at the two places our code reaches it.

- **ARM**, for `MLClient.workspaces.get`: a requests adapter behind azure-core's real `RequestsTransport`, so the
  real MLClient builds the request, deserialises the answer and raises azure-core's own errors. It answers the
  Workspaces - Get call with the JSON the ARM REST reference documents (`properties.mlFlowTrackingUri` in the
  `azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/...` shape, which azureml-mlflow turns into v2.0),
  ARM's error bodies (404 ResourceNotFound, 403 AuthorizationFailed), or a refused connection.
- **Azure ML's MLflow tracking service**, for the MlflowClient: a tracking store registered for the `azureml`
  URI scheme, the place where azureml-mlflow registers its REST store. It holds real `mlflow.entities` objects,
  searched, sorted and paged with MLflow's own `SearchUtils`; each run's artifacts are a local folder (MLflow's
  LocalArtifactRepository serves them). Like Azure ML (Learn, "Query & compare experiments and runs with MLflow",
  support matrix) it refuses filters on `attributes.status` and reports Azure ML statuses as MLflow's
  (Completed FINISHED, Running RUNNING, Failed FAILED, Canceled KILLED).
- The credential, which would talk to Microsoft Entra ID: a token, or azure-core's ClientAuthenticationError with
  Entra's message.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from mlflow.entities import Experiment, LifecycleStage, Metric, Param, Run, RunData, RunInfo, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.search_utils import SearchUtils
from requests.adapters import BaseAdapter

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-labeling"
WORKSPACE = "ws-labeling"
REGION = "westeurope"


def workspace_id(subscription: str = SUBSCRIPTION, group: str = RESOURCE_GROUP, name: str = WORKSPACE) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.MachineLearningServices/"
        f"workspaces/{name}"
    )


def tracking_uri_v1(region: str = REGION, **scope: str) -> str:
    """What ARM answers in properties.mlFlowTrackingUri."""
    return f"azureml://{region}.api.azureml.ms/mlflow/v1.0{workspace_id(**scope)}"


def tracking_uri_v2(region: str = REGION, **scope: str) -> str:
    """The URI azureml-mlflow hands MLflow 2 and 3 (the same path under /mlflow/v2.0)."""
    return f"azureml://{region}.api.azureml.ms/mlflow/v2.0{workspace_id(**scope)}"


# ------------------------------------------------------------------------------------------------- credential


class FakeCredential:
    """A TokenCredential: tokens for any scope, or Entra's refusal."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        if self.refuse:
            raise ClientAuthenticationError(message=self.refuse)
        return AccessToken("fake-token", int(time.time()) + 3600)


# ------------------------------------------------------------------------------------------------------- ARM


def _response(request: requests.PreparedRequest, status: int, body: dict[str, Any]) -> requests.Response:
    data = json.dumps(body).encode()
    response = requests.Response()
    response.status_code = status
    response.reason = {200: "OK", 403: "Forbidden", 404: "Not Found"}.get(status, "Error")
    response.url = request.url or ""
    response.request = request
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    response.headers["x-ms-request-id"] = "00000000-0000-0000-0000-00000000abcd"
    response.raw = urllib3.HTTPResponse(
        body=io.BytesIO(data),
        headers={"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(data))},
        status=status,
        preload_content=False,
    )
    return response


class FakeArm(BaseAdapter):
    """Answers `GET .../workspaces/{name}` as ARM does. `workspaces` maps a workspace name to its region (all in
    SUBSCRIPTION/RESOURCE_GROUP); `forbidden` answers 403; `unreachable` refuses every connection."""

    def __init__(
        self, workspaces: dict[str, str] | None = None, *, forbidden: bool = False, unreachable: bool = False
    ) -> None:
        super().__init__()
        self.workspaces = {WORKSPACE: REGION} if workspaces is None else workspaces
        self.forbidden = forbidden
        self.unreachable = unreachable
        self.requests: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.requests.append(f"{request.method} {request.url}")
        if self.unreachable:
            raise requests.ConnectionError(
                "HTTPSConnectionPool(host='management.azure.com', port=443): Max retries exceeded "
                "(Caused by NameResolutionError: Failed to resolve 'management.azure.com')"
            )
        path = (request.path_url or "").split("?")[0]
        name = path.rsplit("/", 1)[-1]
        if request.method != "GET" or "/workspaces/" not in path:
            return _response(request, 400, {"error": {"code": "BadRequest", "message": f"unexpected {path}"}})
        if self.forbidden:
            return _response(request, 403, {"error": {
                "code": "AuthorizationFailed",
                "message": f"The client 'app' does not have authorization to perform action "
                f"'Microsoft.MachineLearningServices/workspaces/read' over scope '{path}' or the scope is invalid.",
            }})  # fmt: skip
        if name not in self.workspaces:
            return _response(request, 404, {"error": {
                "code": "ResourceNotFound",
                "message": f"The Resource 'Microsoft.MachineLearningServices/workspaces/{name}' under resource group "
                f"'{RESOURCE_GROUP}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            }})  # fmt: skip
        region = self.workspaces[name]
        return _response(request, 200, {
            "id": workspace_id(name=name),
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": region,
            "kind": "Default",
            "identity": {"type": "SystemAssigned"},
            "sku": {"name": "Basic", "tier": "Basic"},
            "properties": {
                "friendlyName": name,
                "workspaceId": "3f2b1c0e-0000-4000-8000-000000000001",
                "discoveryUrl": f"https://{region}.api.azureml.ms/discovery",
                "mlFlowTrackingUri": tracking_uri_v1(region, name=name),
                "provisioningState": "Succeeded",
                "publicNetworkAccess": "Enabled",
            },
        })  # fmt: skip

    def close(self) -> None:
        pass


def arm_transport(adapter: FakeArm) -> RequestsTransport:
    session = requests.Session()
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=False)


# -------------------------------------------------------------------------------------------- MLflow tracking


@dataclass
class FakeRun:
    """One Azure ML run as MLflow shows it: `status` is MLflow's (FINISHED for Completed), `artifacts` a folder."""

    run_id: str
    status: str = "FINISHED"
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: Path | None = None
    start_time: int = 0
    fail_on: str | None = None


class FakeTrackingService:
    """The runs of one workspace's experiments, by experiment name. Runs listed first started last."""

    def __init__(self, experiments: dict[str, list[FakeRun]], empty_artifacts: Path) -> None:
        self.experiments = {name: str(index + 1) for index, name in enumerate(experiments)}
        self.runs: dict[str, tuple[str, FakeRun]] = {}
        self.empty = empty_artifacts
        self.empty.mkdir(parents=True, exist_ok=True)
        for name, runs in experiments.items():
            for order, run in enumerate(runs):
                run.start_time = run.start_time or 1_800_000_000_000 - 1000 * order
                self.runs[run.run_id] = (self.experiments[name], run)
        self.uris: list[str] = []
        self.calls: list[str] = []
        self.downloads: list[str] = []

    def artifacts_of(self, run_id: str) -> Path:
        run = self.runs[run_id][1]
        artifacts = run.artifacts or (self.empty / run_id)
        artifacts.mkdir(parents=True, exist_ok=True)
        return artifacts

    def entity(self, run_id: str) -> Run:
        experiment_id, run = self.runs[run_id]
        info = RunInfo(
            run_id=run.run_id,
            experiment_id=experiment_id,
            user_id="labeling",
            status=run.status,
            start_time=run.start_time,
            end_time=None if run.status == "RUNNING" else run.start_time + 60_000,
            lifecycle_stage=LifecycleStage.ACTIVE,
            artifact_uri=f"{ARTIFACT_SCHEME}://{run_id}",
            run_name=run.run_id,
        )
        data = RunData(
            metrics=[Metric(k, v, run.start_time, 0) for k, v in run.metrics.items()],
            params=[Param(k, v) for k, v in run.params.items()],
            tags=[RunTag(k, v) for k, v in {**run.tags, "mlflow.runName": run.run_id}.items()],
        )
        return Run(info, data)


ARTIFACT_SCHEME = "fakeaml-artifacts"


class FakeArtifactRepository(LocalArtifactRepository):
    """A run's artifacts (`fakeaml-artifacts://<run id>`) from its local folder, through MLflow's own local
    repository; records each file downloaded and fails the one the run's `fail_on` names (a connection reset)."""

    def __init__(self, service: FakeTrackingService, artifact_uri: str) -> None:
        self.service = service
        self.run_id = artifact_uri.split("://", 1)[1].strip("/")
        super().__init__(service.artifacts_of(self.run_id).as_uri())

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        self.service.downloads.append(f"{self.run_id}/{remote_file_path}")
        if self.service.runs[self.run_id][1].fail_on == remote_file_path:
            raise ConnectionResetError(f"connection reset while downloading {remote_file_path}")
        super()._download_file(remote_file_path, local_path)


class FakeTrackingStore(AbstractStore):
    """The read calls the refresh makes, over a FakeTrackingService. Writes are not part of this fake."""

    def __init__(self, service: FakeTrackingService) -> None:
        super().__init__()
        self.service = service

    def get_experiment_by_name(self, experiment_name: str) -> Experiment | None:
        self.service.calls.append(f"get_experiment_by_name {experiment_name}")
        experiment_id = self.service.experiments.get(experiment_name)
        if experiment_id is None:
            return None
        return Experiment(experiment_id, experiment_name, f"azureml://experiments/{experiment_name}",
                          LifecycleStage.ACTIVE)  # fmt: skip

    def get_experiment(self, experiment_id: str) -> Experiment:
        for name, known in self.service.experiments.items():
            if known == experiment_id:
                found = self.get_experiment_by_name(name)
                assert found is not None
                return found
        raise MlflowException(f"Experiment {experiment_id} not found", RESOURCE_DOES_NOT_EXIST)

    def get_run(self, run_id: str) -> Run:
        self.service.calls.append(f"get_run {run_id}")
        if run_id not in self.service.runs:
            raise MlflowException(f"Run '{run_id}' not found", RESOURCE_DOES_NOT_EXIST)
        return self.service.entity(run_id)

    def _search_runs(
        self,
        experiment_ids: list[str],
        filter_string: str,
        run_view_type: Any,
        max_results: int,
        order_by: list[str] | None,
        page_token: str | None,
    ) -> tuple[list[Run], str | None]:
        self.service.calls.append(f"search_runs {filter_string!r} {order_by}")
        if "attributes.status" in (filter_string or "") or "status" in str(filter_string).split(" ")[0:1]:
            raise MlflowException("Filtering runs by attributes.status is not supported", INVALID_PARAMETER_VALUE)
        runs = [self.service.entity(i) for i, (e, _) in self.service.runs.items() if e in experiment_ids]
        runs = SearchUtils.filter(runs, filter_string)
        runs = SearchUtils.sort(runs, order_by or ["attributes.start_time DESC"])
        return SearchUtils.paginate(runs, page_token, max_results)

    def get_metric_history(self, run_id: str, metric_key: str, max_results: Any = None, page_token: Any = None) -> Any:
        run = self.service.runs[run_id][1]
        value = run.metrics.get(metric_key)
        return PagedList([] if value is None else [Metric(metric_key, value, run.start_time, 0)], None)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise MlflowException("the fake Azure ML tracking service is read-only", INVALID_PARAMETER_VALUE)

    search_experiments = create_experiment = delete_experiment = restore_experiment = rename_experiment = _refuse
    update_run_info = create_run = delete_run = restore_run = log_batch = log_inputs = link_traces_to_run = _refuse


@dataclass
class FakeAml:
    """The whole fake: ARM, the tracking service and the credential, installed where the real ones are looked up."""

    service: FakeTrackingService
    arm: FakeArm = field(default_factory=FakeArm)
    credential: FakeCredential = field(default_factory=FakeCredential)

    def install(self, monkeypatch: Any) -> FakeAml:
        from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        from shared.refresh import aml

        real_credential, real_options = aml.credential_for, aml.client_options
        monkeypatch.setattr(aml, "credential_for", lambda settings: (self.credential, real_credential(settings)[1]))
        monkeypatch.setattr(
            aml, "client_options", lambda: {**real_options(), "retry_total": 0, "transport": arm_transport(self.arm)}
        )

        def tracking_store(store_uri: str, artifact_uri: str | None = None) -> FakeTrackingStore:
            self.service.uris.append(store_uri)
            return FakeTrackingStore(self.service)

        def artifact_repository(artifact_uri: str, tracking_uri: Any = None, registry_uri: Any = None) -> Any:
            return FakeArtifactRepository(self.service, artifact_uri)

        # MLflow caches one store per tracking URI for the life of the process: clear it around each use.
        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        monkeypatch.setitem(_tracking_store_registry._registry, "azureml", tracking_store)
        monkeypatch.setitem(_artifact_repository_registry._registry, ARTIFACT_SCHEME, artifact_repository)
        return self


def iter_files(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix()


# ---------------------------------------------------------------------------------------------- run builders


def automl_child(run_id: str, artifacts: Path | None, score: float | None, *, parent: str = "",
                 metric: str = "accuracy", **kwargs: Any) -> FakeRun:  # fmt: skip
    """A trial: `score` is its primary metric (named `metric`); `parent` is set by training_run."""
    metrics = {} if score is None else {metric: score}
    return FakeRun(run_id, tags={"mlflow.parentRunId": parent} if parent else {}, metrics=metrics,
                   artifacts=artifacts, **kwargs)  # fmt: skip


def training_run(
    run_id: str,
    children: list[FakeRun],
    *,
    best: str | None = None,
    status: str = "FINISHED",
    primary_metric: str | None = None,
) -> list[FakeRun]:
    """A labeling project's AutoML job and its runs, newest first: the parent (with the automl_best_child_run_id
    tag when `best`), its HyperDrive run `<id>_HD`, and the trials under it."""
    tags = {"automl_best_child_run_id": best} if best else {}
    if primary_metric:
        tags["primary_metric"] = primary_metric  # not something Azure ML is documented to set; tested both ways
    parent = FakeRun(run_id, status=status, tags=tags)
    hyperdrive = FakeRun(f"{run_id}_HD", status=status, tags={"mlflow.parentRunId": run_id})
    for child in children:
        child.tags["mlflow.parentRunId"] = hyperdrive.run_id
    return [parent, hyperdrive, *children]


def fail_download(service: FakeTrackingService, run_id: str, name: str) -> None:
    """Make the download of `name` from `run_id` fail midway (a connection reset), after other files went."""
    service.runs[run_id][1].fail_on = name


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
