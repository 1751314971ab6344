"""The AML labeling experiment as a model source, through Azure ML SDK v2 (azure-ai-ml) and MLflow, imported lazily.

The lookup is the one Microsoft's AutoML image notebooks use ("Retrieve the best trial"): `MLClient` gets the
workspace and its MLflow tracking URI (azureml-mlflow, installed beside it, registers the MLClient's credential for
that URI); an `MlflowClient` on that URI finds the experiment, its AutoML parent runs, the parent's
`automl_best_child_run_id` tag, the best child's metrics and its artifacts. The boundary is small on purpose:
`MLClient.workspaces.get`; on the MlflowClient, `get_experiment_by_name`, `search_runs` and `get_run`; on the
best child's artifact repository, `list_artifacts` and `download_artifacts`. Everything else here is plain data.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.errors import AppError
from shared.core.settings import Settings

logger = logging.getLogger(__name__)

BEST_CHILD_TAG = "automl_best_child_run_id"
# MLflow's tag naming a run's parent; AutoML trials sit under a HyperDrive run, itself under the AutoML run.
PARENT_TAG = "mlflow.parentRunId"
MODEL_ONNX = "train_artifacts/model.onnx"
LABELS = "train_artifacts/labels.json"
# AutoML's PyTorch checkpoint, converted to ONNX when a run has no usable model.onnx (SDK v2 runs keep it in the
# MLflow model's artifacts, older runs under train_artifacts/ or outputs/).
CHECKPOINTS = ("train_artifacts/model.pt", "outputs/mlflow-model/artifacts/model.pt", "outputs/model.pt")
# Small files that say the task and sizes. Never a whole folder: train_artifacts/ holds per-epoch checkpoints
# (gigabytes).
OPTIONAL_FILES = (
    "outputs/scoring_file_v_1_0_0.py",
    "outputs/mlflow-model/artifacts/settings.json",
    "outputs/mlflow-model/MLmodel",
)
# The folders listed (one level each) to learn which of the files above a run has.
LISTED_FOLDERS = ("train_artifacts", "outputs", "outputs/mlflow-model", "outputs/mlflow-model/artifacts")
PARENTS_EXAMINED = 20
# Runs asked for per search page; an experiment holds the parents and all their trials, newest first.
SEARCH_PAGE = 200
RUNS_EXAMINED = 2000
# AutoML for images has one primary metric per task (Learn, "Set up AutoML to train computer vision models",
# primary metric): multi-class accuracy, multi-label iou, object detection and instance segmentation
# mean_average_precision. Used when a parent run does not name its primary metric.
TASK_METRICS = ("mean_average_precision", "iou", "accuracy")
# MLflow's run status for Azure ML's Completed (Learn, "Query & compare experiments and runs with MLflow").
FINISHED = "FINISHED"
AML_STATUS = {
    "FINISHED": "Completed",
    "RUNNING": "Running",
    "SCHEDULED": "Queued or Preparing",
    "FAILED": "Failed",
    "KILLED": "Canceled",
}
# ARM calls of MLClient: a dead network fails in seconds, not minutes, and a timer tick is not spent retrying.
CONNECTION_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
RETRIES = 2


class AmlError(AppError):
    """AML cannot be used: unreachable, credentials refused, workspace or experiment missing, no usable run."""


@dataclass(frozen=True)
class Experiment:
    """The labeling project's training experiment, opened: an MlflowClient on the workspace's tracking URI."""

    client: Any
    experiment_id: str
    name: str
    workspace: str
    tracking_uri: str


@dataclass(frozen=True)
class Candidate:
    """The best child of one completed AutoML training run, with what the refresh needs to judge it."""

    run_id: str
    parent_run_id: str
    experiment: str
    metric_name: str
    metric_value: float | None
    files: tuple[str, ...]
    repository: Any

    @property
    def source(self) -> dict[str, Any]:
        return {
            "kind": "aml",
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "experiment": self.experiment,
        }

    @property
    def metric(self) -> dict[str, Any] | None:
        if self.metric_value is None:
            return None
        return {"name": self.metric_name, "value": self.metric_value}


def _one_line(exc: BaseException) -> str:
    # azure-core's HttpResponseError renders "(Code) message" plus "Code:" and "Message:" lines; its parsed ARM
    # error has the message alone. MlflowException has `message`. One line of the first meaningful text.
    message = getattr(getattr(exc, "error", None), "message", None) or getattr(exc, "message", None)
    text = str(message if isinstance(message, str) and message else exc)
    text = " ".join(text.split())
    # MLflow's artifact download wraps each file's failure as "... ##### File <name> ##### <cause>".
    text = text.rsplit("#####", 1)[-1].strip()
    return (text[:400] + "...") if len(text) > 400 else (text or exc.__class__.__name__)


def credential_for(settings: Settings) -> tuple[Any, str]:
    """(credential, how it is described in messages). A service principal when AZURE_TENANT_ID, AZURE_CLIENT_ID
    and AZURE_CLIENT_SECRET are all set; else DefaultAzureCredential (the managed identity AZURE_CLIENT_ID names,
    or the system-assigned one; `az login` on a workstation)."""
    if settings.azure_tenant_id and settings.azure_client_id and settings.azure_client_secret:
        from azure.identity import ClientSecretCredential

        credential: Any = ClientSecretCredential(
            settings.azure_tenant_id, settings.azure_client_id, settings.azure_client_secret
        )
        return credential, f"service principal {settings.azure_client_id}"
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
    if settings.azure_client_id:
        return credential, f"managed identity {settings.azure_client_id}"
    return credential, "the system-assigned managed identity (or the signed-in Azure CLI user)"


def client_options() -> dict[str, Any]:
    """Keyword arguments for MLClient's ARM pipeline (azure-core's timeouts and retry policy)."""
    return {
        # No progress bars and no telemetry: the timer logs one line per tick, and the SDK's activity logger would
        # add its own lines (with tracebacks on failures) to the app's log.
        "show_progress": False,
        "enable_telemetry": False,
        "connection_timeout": CONNECTION_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "retry_total": RETRIES,
    }


def _classify(exc: BaseException, where: str, how: str) -> AmlError:
    """One clear line for what azure-core, azure-identity or MLflow raised while reaching the workspace."""
    name = exc.__class__.__name__
    status = getattr(exc, "status_code", None)
    if name in ("ClientAuthenticationError", "CredentialUnavailableError") or status == 401:
        return AmlError(f"AML refused the credentials of {how} for {where}: {_one_line(exc)}")
    if status == 403:
        return AmlError(
            f"{how} may not read {where} (it needs the Reader role on the workspace): {_one_line(exc)}"
        )
    if name == "ResourceNotFoundError" or status == 404:
        return AmlError(f"AML {where} was not found or is not accessible: {_one_line(exc)}")
    if name in ("ServiceRequestError", "ServiceResponseError", "ConnectionError", "ConnectTimeout", "ReadTimeout",
                "Timeout", "OSError") or isinstance(exc, OSError):  # fmt: skip
        return AmlError(f"AML is unreachable while opening {where} with {how}: {_one_line(exc)}")
    return AmlError(f"AML failed while opening {where}: {name}: {_one_line(exc)}")


def open_experiment(settings: Settings) -> Experiment:
    """Authenticate, get the workspace's MLflow tracking URI and the labeling experiment. Raises AmlError with one
    clear line (unreachable, credentials refused, workspace or experiment missing)."""
    missing = [
        key
        for key, value in (
            ("AML_SUBSCRIPTION_ID", settings.aml_subscription_id),
            ("AML_RESOURCE_GROUP", settings.aml_resource_group),
            ("AML_WORKSPACE_NAME", settings.aml_workspace_name),
            ("AML_EXPERIMENT_NAME", settings.aml_experiment_name),
        )
        if not value
    ]
    if missing:
        raise AmlError(f"AML is not configured: set {', '.join(missing)}")
    assert settings.aml_workspace_name is not None and settings.aml_experiment_name is not None
    from azure.ai.ml import MLClient
    from mlflow.tracking import MlflowClient

    credential, how = credential_for(settings)
    where = f"workspace {settings.aml_workspace_name} (resource group {settings.aml_resource_group})"
    try:
        ml_client = MLClient(
            credential,
            subscription_id=settings.aml_subscription_id,
            resource_group_name=settings.aml_resource_group,
            workspace_name=settings.aml_workspace_name,
            **client_options(),
        )
        # azure-ai-ml's activity logger writes "ActivityStarted"/"ActivityCompleted" lines for every call and an
        # ERROR line of its own when one fails; MLClient resets that logger to INFO, so it is quieted after it.
        # The refresh reports each outcome in one line of its own.
        logging.getLogger("azure.ai.ml._telemetry").setLevel(logging.CRITICAL)
        # With azureml-mlflow installed, this also registers the credential for the returned tracking URI.
        workspace = ml_client.workspaces.get(settings.aml_workspace_name)
    except Exception as exc:  # noqa: BLE001 - azure-core and azure-identity raise many types; classified above
        raise _classify(exc, where, how) from None
    tracking_uri = getattr(workspace, "mlflow_tracking_uri", None)
    if not tracking_uri:
        raise AmlError(f"AML {where} has no MLflow tracking URI (is it a hub rather than a workspace?)")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(settings.aml_experiment_name)
    except Exception as exc:  # noqa: BLE001 - MLflow wraps transport and auth failures in MlflowException
        raise _classify(exc, where, how) from None
    if experiment is None:
        raise AmlError(
            f"experiment {settings.aml_experiment_name} was not found in {where}; a labeling project's training "
            "experiment is named like labeling_Training_<id>"
        )
    return Experiment(
        client=client,
        experiment_id=str(experiment.experiment_id),
        name=str(experiment.name),
        workspace=settings.aml_workspace_name,
        tracking_uri=tracking_uri,
    )


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def metric_name_of(parent: Any, child: Any | None) -> str:
    """The parent's primary metric: its `primary_metric` tag or parameter when it has one, else the task's
    primary metric found among the child's metrics (TASK_METRICS), else accuracy."""
    for values in (parent.data.tags, parent.data.params):
        named = (values or {}).get("primary_metric")
        if isinstance(named, str) and named:
            return named
    metrics = child.data.metrics if child is not None else {}
    return next((name for name in TASK_METRICS if name in metrics), "accuracy")


def _runs(experiment: Experiment, filter_string: str = "") -> Any:
    """The experiment's runs, newest first (Azure ML's default order, asked for explicitly), page by page."""
    token = None
    seen = 0
    while seen < RUNS_EXAMINED:
        page = experiment.client.search_runs(
            [experiment.experiment_id],
            filter_string=filter_string,
            max_results=SEARCH_PAGE,
            order_by=["start_time DESC"],
            page_token=token,
        )
        for run in page:
            seen += 1
            yield run
        token = page.token
        if not token or not page:
            return


def _children(experiment: Experiment, run_id: str) -> list[Any]:
    # Learn, "Query & compare experiments and runs with MLflow", child runs: filter on tags.mlflow.parentRunId.
    return list(_runs(experiment, f"tags.{PARENT_TAG} = '{run_id}'"))


def best_child(experiment: Experiment, parent: Any) -> Any | None:
    """The run the parent's `automl_best_child_run_id` tag names (when it finished), else the finished trial
    with the best primary metric among the parent's children and their children (the HyperDrive level)."""
    client = experiment.client
    tagged = (parent.data.tags or {}).get(BEST_CHILD_TAG)
    if tagged:
        try:
            child = client.get_run(tagged)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable child only costs this parent
            logger.info("run %s names best child %s, which cannot be read (%s)", parent.info.run_id, tagged,
                        _one_line(exc))  # fmt: skip
        else:
            if child.info.status == FINISHED:
                return child
            logger.info("run %s names best child %s, which is %s", parent.info.run_id, tagged,
                        AML_STATUS.get(child.info.status, child.info.status))  # fmt: skip
    trials: list[Any] = []
    for child in _children(experiment, parent.info.run_id):
        grandchildren = _children(experiment, child.info.run_id)
        trials.extend(grandchildren or [child])
    finished = [t for t in trials if t.info.status == FINISHED]
    if not finished:
        return None
    metric_name = metric_name_of(parent, finished[0])
    scored = [(v, t) for t in finished if (v := _float(t.data.metrics.get(metric_name))) is not None]
    if not scored:
        return None
    return max(scored, key=lambda pair: pair[0])[1]


def artifact_repository(run: Any, tracking_uri: str) -> Any:
    """The run's own artifact repository (azureml-mlflow's for an `azureml://` artifact URI).

    Not `MlflowClient.list_artifacts` / `download_artifacts`: from MLflow 3 they go through `runs:/` URIs, which
    also search the experiment's logged models, a call Azure ML's tracking service is not documented to offer."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri)


def artifact_files(repository: Any) -> tuple[str, ...]:
    """Which of the files the refresh may need the run has, from one listing per folder (never a whole tree)."""
    wanted = {MODEL_ONNX, LABELS, *CHECKPOINTS, *OPTIONAL_FILES}
    found: set[str] = set()
    for folder in LISTED_FOLDERS:
        for info in repository.list_artifacts(folder):
            if not info.is_dir and info.path in wanted:
                found.add(info.path)
    return tuple(sorted(found))


def find_candidates(experiment: Experiment, limit: int = 1) -> list[Candidate]:
    """Best children of the newest completed training runs that have usable artifacts, newest first.

    Runs that failed, are still running, have no scored child or lack model.onnx and labels.json (and model.pt)
    are skipped, each with a log line saying why.
    """
    try:
        return _find_candidates(experiment, limit)
    except AmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow wraps transport and auth failures in MlflowException
        raise AmlError(
            f"AML failed while reading the runs of experiment {experiment.name} in workspace {experiment.workspace}: "
            f"{exc.__class__.__name__}: {_one_line(exc)}"
        ) from None


def _find_candidates(experiment: Experiment, limit: int) -> list[Candidate]:
    found: list[Candidate] = []
    examined = 0
    for parent in _runs(experiment):
        if examined >= PARENTS_EXAMINED or len(found) >= limit:
            break
        if (parent.data.tags or {}).get(PARENT_TAG):
            continue  # a trial or a HyperDrive run: its parent is examined instead
        examined += 1
        run_id = parent.info.run_id
        if parent.info.status != FINISHED:
            logger.info("skipping run %s: status %s", run_id, AML_STATUS.get(parent.info.status, parent.info.status))
            continue
        child = best_child(experiment, parent)
        if child is None:
            logger.info("skipping run %s: no completed child with a score", run_id)
            continue
        repository = artifact_repository(child, experiment.tracking_uri)
        files = artifact_files(repository)
        has_onnx = MODEL_ONNX in files and LABELS in files
        if not has_onnx and not any(c in files for c in CHECKPOINTS):
            missing = ", ".join(f for f in (MODEL_ONNX, LABELS) if f not in files)
            logger.info("skipping run %s (best child %s): no %s and no model.pt", run_id, child.info.run_id, missing)
            continue
        metric_name = metric_name_of(parent, child)
        found.append(
            Candidate(
                run_id=child.info.run_id,
                parent_run_id=run_id,
                experiment=experiment.name,
                metric_name=metric_name,
                metric_value=_float(child.data.metrics.get(metric_name)),
                files=files,
                repository=repository,
            )
        )
    return found


def _download(candidate: Candidate, name: str, folder: Path) -> Path:
    """One named artifact into `folder`, keeping its relative path (MLflow's download_artifacts does)."""
    folder.mkdir(parents=True, exist_ok=True)
    local = Path(candidate.repository.download_artifacts(name, str(folder)))
    target = folder / name
    if not target.is_file():
        if local.is_file():  # an artifact repository that returns the file elsewhere: move it into the layout
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(local), target)
        else:
            raise AmlError(f"run {candidate.run_id}: {name} was not downloaded")
    return target


def download_candidate(candidate: Candidate, folder: Path) -> Path:
    """Download the named files (never a whole folder) into `folder`, keeping AutoML's layout.

    On any failure the folder is removed and AmlError raised: nothing half-downloaded is ever published.
    """
    if MODEL_ONNX in candidate.files and LABELS in candidate.files:
        wanted = [MODEL_ONNX, LABELS]
    else:
        wanted = [next(c for c in CHECKPOINTS if c in candidate.files)]
    wanted += [f for f in OPTIONAL_FILES if f in candidate.files]
    try:
        for name in wanted:
            _download(candidate, name, folder)
    except AmlError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure midway must leave nothing behind
        shutil.rmtree(folder, ignore_errors=True)
        raise AmlError(f"downloading the artifacts of run {candidate.run_id} failed: {_one_line(exc)}") from None
    return folder


def download_checkpoint(candidate: Candidate, folder: Path) -> Path | None:
    """Add the run's model.pt to an already downloaded folder (for an unusable model.onnx); None if it has none."""
    name = next((c for c in CHECKPOINTS if c in candidate.files), None)
    if name is None:
        return None
    try:
        return _download(candidate, name, folder)
    except AmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as one line; the folder is discarded by the caller
        raise AmlError(f"downloading {name} of run {candidate.run_id} failed: {_one_line(exc)}") from None
