"""The AML labeling experiment as a model source, through azureml-core (SDK v1), imported lazily.

The boundary is small on purpose: `open_experiment` (auth, `Workspace.get`, the experiment) and, on the
Experiment and Run objects it returns, `get_runs`, `get_status`, `get_tags`, `get_properties`,
`get_metrics`, `get_children`, `get_file_names` and `download_file`. Another source (SDK v2, MLflow) can
sit beside it by producing the same `Candidate`s.
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
MODEL_ONNX = "train_artifacts/model.onnx"
LABELS = "train_artifacts/labels.json"
# AutoML's PyTorch checkpoint, converted to ONNX when a run has no usable model.onnx.
CHECKPOINTS = ("train_artifacts/model.pt", "outputs/model.pt")
# Small files that say the task and sizes. Never the whole train_artifacts/ prefix: it holds per-epoch
# checkpoints (gigabytes).
OPTIONAL_FILES = (
    "outputs/scoring_file_v_1_0_0.py",
    "outputs/mlflow-model/artifacts/settings.json",
    "outputs/mlflow-model/MLmodel",
)
PARENTS_EXAMINED = 20


class AmlError(AppError):
    """AML cannot be used: unreachable, credentials refused, workspace or experiment missing, no usable run."""


@dataclass(frozen=True)
class Candidate:
    """The best child of one completed AutoML training run, with what the refresh needs to judge it."""

    run_id: str
    parent_run_id: str
    experiment: str
    metric_name: str
    metric_value: float | None
    files: tuple[str, ...]
    run: Any

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
    # azureml-core's exceptions render as a multi-line report with a JSON error body; their message alone
    # is the useful part.
    message = getattr(exc, "_exception_message", None) or getattr(exc, "error_msg", None)
    text = " ".join(str(message if isinstance(message, str) and message else exc).split())
    return (text[:240] + "...") if len(text) > 240 else (text or exc.__class__.__name__)


def open_experiment(settings: Settings) -> Any:
    """Authenticate, get the workspace and its labeling experiment. Raises AmlError with one clear line."""
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
    from azureml.core import Workspace
    from azureml.core.authentication import MsiAuthentication, ServicePrincipalAuthentication

    auth: Any
    if settings.azure_tenant_id and settings.azure_client_id and settings.azure_client_secret:
        auth = ServicePrincipalAuthentication(
            tenant_id=settings.azure_tenant_id,
            service_principal_id=settings.azure_client_id,
            service_principal_password=settings.azure_client_secret,
        )
        how = f"service principal {settings.azure_client_id}"
    elif settings.azure_client_id:
        auth = MsiAuthentication(identity_config={"client_id": settings.azure_client_id})
        how = f"managed identity {settings.azure_client_id}"
    else:
        auth = MsiAuthentication()
        how = "the system-assigned managed identity"
    where = f"workspace {settings.aml_workspace_name} (resource group {settings.aml_resource_group})"
    try:
        workspace = Workspace.get(
            name=settings.aml_workspace_name,
            auth=auth,
            subscription_id=settings.aml_subscription_id,
            resource_group=settings.aml_resource_group,
        )
        experiments = workspace.experiments
    except Exception as exc:  # noqa: BLE001 - azureml-core raises many unrelated types; classified by name
        name = exc.__class__.__name__
        if name in ("AzureConnectionError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout"):
            raise AmlError(f"AML is unreachable while opening {where} with {how}: {_one_line(exc)}") from None
        if name in ("AuthenticationException", "AuthenticationError", "UnauthorizedError", "ForbiddenError",
                    "ClientAuthenticationError"):  # fmt: skip
            raise AmlError(f"AML refused the credentials of {how} for {where}: {_one_line(exc)}") from None
        if name in ("WorkspaceException", "ProjectSystemException", "ResourceNotFoundError"):
            raise AmlError(f"AML {where} was not found or is not accessible: {_one_line(exc)}") from None
        raise AmlError(f"AML failed while opening {where}: {name}: {_one_line(exc)}") from None
    experiment = experiments.get(settings.aml_experiment_name)
    if experiment is None:
        raise AmlError(
            f"experiment {settings.aml_experiment_name} was not found in {where}; a labeling project's training "
            "experiment is named like labeling_Training_<id>"
        )
    return experiment


def _float(value: Any) -> float | None:
    if isinstance(value, list):
        value = value[-1] if value else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _score(run: Any, metric_name: str) -> float | None:
    score = _float((run.get_properties() or {}).get("score"))
    if score is None:
        score = _float((run.get_metrics() or {}).get(metric_name))
    return score


def best_child(parent: Any, metric_name: str) -> Any | None:
    """The child the parent's `automl_best_child_run_id` tag names, else the completed child with the best
    `score` property."""
    children = [
        c
        for c in parent.get_children(recursive=True, properties={"runTemplate": "automl_child"})
        if c.get_status() == "Completed"
    ]
    tagged = (parent.get_tags() or {}).get(BEST_CHILD_TAG)
    if tagged:
        for child in children:
            if child.id == tagged:
                return child
        logger.info("run %s names best child %s, which is not among its completed children", parent.id, tagged)
    scored = [(s, c) for c in children if (s := _score(c, metric_name)) is not None]
    if not scored:
        return None
    return max(scored, key=lambda pair: pair[0])[1]


def find_candidates(experiment: Any, limit: int = 1) -> list[Candidate]:
    """Best children of the newest completed training runs that have usable artifacts, newest first.

    Runs that failed, are still running, have no scored child or lack model.onnx and labels.json are
    skipped, each with a log line saying why.
    """
    found: list[Candidate] = []
    for examined, parent in enumerate(experiment.get_runs()):
        if examined >= PARENTS_EXAMINED or len(found) >= limit:
            break
        status = parent.get_status()
        if status != "Completed":
            logger.info("skipping run %s: status %s", parent.id, status)
            continue
        properties = parent.get_properties() or {}
        metric_name = str(properties.get("primary_metric") or "accuracy")
        child = best_child(parent, metric_name)
        if child is None:
            logger.info("skipping run %s: no completed child with a score", parent.id)
            continue
        files = tuple(child.get_file_names())
        has_onnx = MODEL_ONNX in files and LABELS in files
        if not has_onnx and not any(c in files for c in CHECKPOINTS):
            missing = ", ".join(f for f in (MODEL_ONNX, LABELS) if f not in files)
            logger.info("skipping run %s (best child %s): no %s and no model.pt", parent.id, child.id, missing)
            continue
        found.append(
            Candidate(
                run_id=child.id,
                parent_run_id=parent.id,
                experiment=str(getattr(experiment, "name", "")),
                metric_name=metric_name,
                metric_value=_score(child, metric_name),
                files=files,
                run=child,
            )
        )
    return found


def download_candidate(candidate: Candidate, folder: Path) -> Path:
    """Download the named files (never a whole prefix) into `folder`, keeping AutoML's layout.

    On any failure the folder is removed and AmlError raised: nothing half-downloaded is ever published.
    """
    if MODEL_ONNX in candidate.files and LABELS in candidate.files:
        wanted = [MODEL_ONNX, LABELS]
    else:
        wanted = [next(c for c in CHECKPOINTS if c in candidate.files)]
    wanted += [f for f in OPTIONAL_FILES if f in candidate.files]
    try:
        for name in wanted:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            candidate.run.download_file(name=name, output_file_path=str(target))
            if not target.is_file():
                raise AmlError(f"run {candidate.run_id}: {name} was not downloaded")
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
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        candidate.run.download_file(name=name, output_file_path=str(target))
    except Exception as exc:  # noqa: BLE001 - reported as one line; the folder is discarded by the caller
        raise AmlError(f"downloading {name} of run {candidate.run_id} failed: {_one_line(exc)}") from None
    return target
