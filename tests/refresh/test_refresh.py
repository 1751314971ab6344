"""RefreshModel: AML (azure-ai-ml and MLflow, with ARM and the tracking service faked as tests/fakeaml.py says) ->
policy -> Blob store (a real Azurite)."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import RefreshModel
from shared.cli import main as cli_main
from shared.core.errors import AppError
from shared.core.settings import Settings
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.pointer import Pointer
from shared.refresh import aml
from shared.refresh.policy import refresh_from_run_dir, refresh_model
from shared.skill.service import SkillService
from tests.fakeaml import (
    REGION,
    FakeAml,
    FakeArm,
    FakeCredential,
    FakeRun,
    FakeTrackingService,
    automl_child,
    tracking_uri_v2,
    training_run,
)
from tests.modelfactory import scoring_file, tiny_bundle, tiny_classifier, write_labels
from tests.modelstore.test_store import BODY, served_version

EXPERIMENT = "labeling_Training_1a2b3c"


def http_version(url: str) -> str:
    request = urllib.request.Request(f"{url}/api/classify", data=BODY, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        version: str = json.loads(response.read())["values"][0]["data"]["modelVersion"]
        return version


def run_artifacts(root: Path, seed: int, *, onnx: bool = True) -> Path:
    """What an AutoML best child uploads: train_artifacts/{model.onnx,labels.json}, outputs/scoring file
    (without `onnx`, a run whose export failed and that kept no checkpoint either)."""
    (root / "train_artifacts").mkdir(parents=True)
    if onnx:
        tiny_classifier(root / "train_artifacts" / "model.onnx", seed=seed)
    write_labels(root / "train_artifacts" / "labels.json", ["cat", "dog", "fox", "owl"])
    scoring_file(
        root / "outputs" / "scoring_file_v_1_0_0.py",
        "image-classification",
        {"valid_resize_size": 40, "valid_crop_size": 32, "train_crop_size": 32},
    )
    for epoch in range(3):  # per-epoch checkpoints that must never be downloaded
        (root / "train_artifacts" / f"epoch_{epoch}.pt").write_bytes(b"big")
    return root


@pytest.fixture
def settings(blob_settings: Settings) -> Settings:
    return Settings(
        **{
            **blob_settings.__dict__,
            "aml_subscription_id": "00000000-0000-0000-0000-000000000000",
            "aml_resource_group": "rg-labeling",
            "aml_workspace_name": "ws-labeling",
            "aml_experiment_name": EXPERIMENT,
        }
    )


def fake_aml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *jobs: list[FakeRun], **parts: Any) -> FakeAml:
    """The fake AML service holding the labeling experiment with these AutoML jobs (newest first), installed."""
    runs = [run for job in jobs for run in job]
    service = FakeTrackingService({EXPERIMENT: runs, "another_experiment": []}, tmp_path / "empty-artifacts")
    return FakeAml(service, **parts).install(monkeypatch)


def candidates(settings: Settings) -> list[aml.Candidate]:
    return aml.find_candidates(aml.open_experiment(settings), limit=1)


def pointer(store: BlobModelStore) -> Pointer | None:
    found = store.read_pointer()
    assert found is None or isinstance(found, Pointer)
    return found


def test_best_child_by_tag_wins_over_score(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    high = automl_child("AutoML_1_HD_0", run_artifacts(tmp_path / "a", 1), 0.95)
    tagged = automl_child("AutoML_1_HD_1", run_artifacts(tmp_path / "b", 2), 0.80)
    fake_aml(monkeypatch, tmp_path, training_run("AutoML_1", [high, tagged], best="AutoML_1_HD_1"))
    (candidate,) = candidates(settings)
    assert candidate.run_id == "AutoML_1_HD_1" and candidate.metric == {"name": "accuracy", "value": 0.80}
    assert candidate.source == {
        "kind": "aml",
        "run_id": "AutoML_1_HD_1",
        "parent_run_id": "AutoML_1",
        "experiment": EXPERIMENT,
    }
    # Only the named files were looked for, one folder level at a time: never the per-epoch checkpoints.
    assert candidate.files == (
        "outputs/scoring_file_v_1_0_0.py",
        "train_artifacts/labels.json",
        "train_artifacts/model.onnx",
    )


def test_best_child_by_metric_when_the_tag_is_missing(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    children = [
        automl_child("AutoML_1_HD_0", run_artifacts(tmp_path / "a", 1), 0.71),
        automl_child("AutoML_1_HD_1", run_artifacts(tmp_path / "b", 2), 0.93),
        automl_child("AutoML_1_HD_2", run_artifacts(tmp_path / "c", 3), None),
        automl_child("AutoML_1_HD_3", run_artifacts(tmp_path / "d", 4), 0.99, status="FAILED"),
    ]
    fake = fake_aml(monkeypatch, tmp_path, training_run("AutoML_1", children))
    (candidate,) = candidates(settings)
    assert candidate.run_id == "AutoML_1_HD_1" and candidate.metric_value == 0.93
    # The children were asked for as Learn documents it, by the parent's id in tags.mlflow.parentRunId.
    assert "search_runs \"tags.mlflow.parentRunId = 'AutoML_1'\" ['start_time DESC']" in fake.service.calls


def test_the_primary_metric_follows_the_task_or_the_parents_tag(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = automl_child(
        "AutoML_2_HD_0", run_artifacts(tmp_path / "a", 1), 0.61, metric="mean_average_precision"
    )
    fake_aml(monkeypatch, tmp_path, training_run("AutoML_2", [detector], best="AutoML_2_HD_0"))
    (candidate,) = candidates(settings)
    assert candidate.metric == {"name": "mean_average_precision", "value": 0.61}
    multilabel = automl_child("AutoML_3_HD_0", run_artifacts(tmp_path / "b", 1), 0.7, metric="iou")
    multilabel.metrics["accuracy"] = 0.2  # multi-label runs log accuracy too; iou is their primary metric
    fake_aml(monkeypatch, tmp_path, training_run("AutoML_3", [multilabel], best="AutoML_3_HD_0"))
    (candidate,) = candidates(settings)
    assert candidate.metric == {"name": "iou", "value": 0.7}
    named = automl_child("AutoML_4_HD_0", run_artifacts(tmp_path / "c", 1), 0.3, metric="iou")
    named.metrics["accuracy"] = 0.8
    fake_aml(monkeypatch, tmp_path, training_run("AutoML_4", [named], best="AutoML_4_HD_0", primary_metric="accuracy"))
    (candidate,) = candidates(settings)
    assert candidate.metric == {"name": "accuracy", "value": 0.8}


def test_failed_running_and_unusable_runs_are_skipped_with_a_reason(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_aml(
        monkeypatch,
        tmp_path,
        training_run("AutoML_4", [automl_child("AutoML_4_HD_0", run_artifacts(tmp_path / "r", 4), 0.9)],
                     status="RUNNING"),
        training_run("AutoML_3", [automl_child("AutoML_3_HD_0", run_artifacts(tmp_path / "f", 3), 0.9)],
                     status="FAILED"),
        training_run("AutoML_2", [automl_child("AutoML_2_HD_0", run_artifacts(tmp_path / "p", 2, onnx=False), 0.9)]),
        training_run("AutoML_1", [automl_child("AutoML_1_HD_0", run_artifacts(tmp_path / "ok", 1), 0.7)]),
    )
    with caplog.at_level(logging.INFO, logger="shared.refresh.aml"):
        (candidate,) = candidates(settings)
    assert candidate.run_id == "AutoML_1_HD_0"
    assert [r.getMessage() for r in caplog.records] == [
        "skipping run AutoML_4: status Running",
        "skipping run AutoML_3: status Failed",
        "skipping run AutoML_2 (best child AutoML_2_HD_0): no train_artifacts/model.onnx and no model.pt",
    ]


@pytest.mark.parametrize(
    ("policy", "current", "candidate", "promoted", "decision"),
    [
        ("better", 0.80, 0.90, True, "published and promoted AutoML_9_HD_0: accuracy 0.9000 beats 0.8000"),
        ("better", 0.90, 0.80, False, "kept current: accuracy 0.8000 does not beat current-v's 0.9000"),
        ("better", 0.90, 0.90, False, "kept current: accuracy 0.9000 does not beat current-v's 0.9000"),
        ("newest", 0.80, 0.90, True, "published and promoted AutoML_9_HD_0: MODEL_PROMOTION=newest"),
        ("newest", 0.90, 0.80, True, "published and promoted AutoML_9_HD_0: MODEL_PROMOTION=newest"),
        ("newest", 0.90, 0.90, True, "published and promoted AutoML_9_HD_0: MODEL_PROMOTION=newest"),
    ],
)
def test_promotion_policy(
    settings: Settings,
    store: BlobModelStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    current: float,
    candidate: float,
    promoted: bool,
    decision: str,
) -> None:
    store.publish(
        tiny_bundle(tmp_path / "cur", seed=7), version="current-v", metric={"name": "accuracy", "value": current}
    )
    child = automl_child("AutoML_9_HD_0", run_artifacts(tmp_path / "run", 9), candidate)
    fake = fake_aml(monkeypatch, tmp_path, training_run("AutoML_9", [child], best="AutoML_9_HD_0"))
    outcome = refresh_model(Settings(**{**settings.__dict__, "promotion": policy}), store=store)
    assert (outcome.decision, outcome.promoted, outcome.published) == (decision, promoted, promoted)
    current_pointer = pointer(store)
    assert current_pointer is not None
    assert current_pointer.version == ("AutoML_9_HD_0" if promoted else "current-v")
    if promoted:
        assert current_pointer.metric == {"name": "accuracy", "value": candidate}
        manifest, _ = store.read_manifest("AutoML_9_HD_0") or ({}, "")
        assert manifest["source"]["run_id"] == "AutoML_9_HD_0" and manifest["source"]["experiment"] == EXPERIMENT
        # Named files only: never the per-epoch checkpoints.
        assert sorted(fake.service.downloads) == [
            "AutoML_9_HD_0/outputs/scoring_file_v_1_0_0.py",
            "AutoML_9_HD_0/train_artifacts/labels.json",
            "AutoML_9_HD_0/train_artifacts/model.onnx",
        ]
    else:
        assert fake.service.downloads == [] and store.read_manifest("AutoML_9_HD_0") is None


def test_the_same_run_is_never_published_twice(
    settings: Settings, store: BlobModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = automl_child("AutoML_5_HD_0", run_artifacts(tmp_path / "run", 5), 0.9)
    fake = fake_aml(monkeypatch, tmp_path, training_run("AutoML_5", [child], best="AutoML_5_HD_0"))
    first = refresh_model(settings, store=store)
    assert first.decision == "published and promoted AutoML_5_HD_0: nothing is current"
    second = refresh_model(settings, store=store)
    assert second.decision == "already current" and not second.published
    store.publish(tiny_bundle(tmp_path / "other", seed=8), version="pinned")  # someone pins another version
    third = refresh_model(Settings(**{**settings.__dict__, "promotion": "newest"}), store=store)
    assert third.decision.startswith("already published as AutoML_5_HD_0 and not current")
    assert len(fake.service.downloads) == 3
    assert (pointer(store) or Pointer("", "", "", None, "")).version == "pinned"


def test_no_run_with_model_onnx_is_a_clear_error_and_publishes_nothing(
    settings: Settings, store: BlobModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = automl_child("AutoML_6_HD_0", run_artifacts(tmp_path / "run", 6, onnx=False), 0.9)
    fake_aml(monkeypatch, tmp_path, training_run("AutoML_6", [child]))
    with pytest.raises(aml.AmlError) as caught:
        refresh_model(settings, store=store)
    assert str(caught.value) == (
        "no completed training run with train_artifacts/model.onnx and train_artifacts/labels.json among the 20 "
        f"newest runs of experiment {EXPERIMENT}"
    )
    assert pointer(store) is None and list(store.container.list_blobs()) == []


def test_a_download_failing_midway_publishes_nothing(
    settings: Settings, store: BlobModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish(tiny_bundle(tmp_path / "cur", seed=7), version="current-v", metric={"name": "accuracy", "value": 0.5})
    before = pointer(store)
    child = automl_child(
        "AutoML_7_HD_0", run_artifacts(tmp_path / "run", 7), 0.9, fail_on="train_artifacts/labels.json"
    )
    fake_aml(monkeypatch, tmp_path, training_run("AutoML_7", [child]))
    with pytest.raises(aml.AmlError) as caught:
        refresh_model(settings, store=store)
    assert str(caught.value) == (
        "downloading the artifacts of run AutoML_7_HD_0 failed: connection reset while downloading "
        "train_artifacts/labels.json"
    )
    assert pointer(store) == before
    assert store.read_manifest("AutoML_7_HD_0") is None
    assert [b.name for b in store.container.list_blobs(name_starts_with="AutoML_7")] == []


@pytest.fixture
def aml_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    assert settings.blob_connection_string is not None
    env = {
        "MODEL_BLOB_CONNECTION_STRING": settings.blob_connection_string,
        "MODEL_BLOB_CONTAINER": settings.blob_container,
        "MODEL_CACHE_DIR": str(settings.cache_dir),
        "AML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "AML_RESOURCE_GROUP": "rg-labeling",
        "AML_WORKSPACE_NAME": "ws-labeling",
        "EXPERIMENT_NAME": EXPERIMENT,  # the older PowerSkill's name for the setting
    }
    for key in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AML_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_timer_function_publishes_and_the_dev_server_switches(
    aml_env: dict[str, str],
    settings: Settings,
    store: BlobModelStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    dev_server: tuple[str, SkillService],
) -> None:
    url, _ = dev_server
    store.publish(tiny_bundle(tmp_path / "cur", seed=7), version="current-v", metric={"name": "accuracy", "value": 0.6})
    assert http_version(url) == "current-v"
    child = automl_child("AutoML_8_HD_0", run_artifacts(tmp_path / "run", 8), 0.91)
    fake = fake_aml(monkeypatch, tmp_path, training_run("AutoML_8", [child], best="AutoML_8_HD_0"))
    with caplog.at_level(logging.INFO, logger="shared.refresh.policy"):
        RefreshModel.main(func.timer.TimerRequest(past_due=False))
    # MLClient asked ARM for the workspace with a token for ARM, and MLflow was pointed at its tracking URI.
    (request,) = fake.arm.requests
    assert request.startswith(
        "GET https://management.azure.com/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/"
        "rg-labeling/providers/Microsoft.MachineLearningServices/workspaces/ws-labeling?api-version="
    )
    assert fake.credential.scopes == [("https://management.azure.com/.default",)]
    assert fake.service.uris == [tracking_uri_v2()]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "shared.refresh.policy"]
    assert line.startswith(
        "refresh candidate=AutoML_8_HD_0 metric=accuracy=0.9100 current=current-v "
        "decision='published and promoted AutoML_8_HD_0: accuracy 0.9100 beats 0.6000' ms="
    )
    # The dev server's instance finds it by itself, within the poll period (1 s here) and a few seconds.
    published = time.monotonic()
    seen = []
    while time.monotonic() < published + settings.poll_s + 5:
        seen.append(http_version(url))
        if seen[-1] == "AutoML_8_HD_0":
            break
        time.sleep(0.1)
    assert seen[-1] == "AutoML_8_HD_0" and set(seen) <= {"current-v", "AutoML_8_HD_0"}


def test_a_workspace_in_any_region_is_read_through_its_v2_tracking_uri(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ARM answers the v1.0 URI; azureml-mlflow hands MLflow 3 the same workspace under /mlflow/v2.0."""
    child = automl_child("AutoML_1_HD_0", run_artifacts(tmp_path / "a", 1), 0.9)
    fake = fake_aml(
        monkeypatch, tmp_path, training_run("AutoML_1", [child], best="AutoML_1_HD_0"),
        arm=FakeArm({"ws-labeling": "swedencentral"}),
    )  # fmt: skip
    experiment = aml.open_experiment(settings)
    assert experiment.tracking_uri == tracking_uri_v2("swedencentral") == (
        "azureml://swedencentral.api.azureml.ms/mlflow/v2.0/subscriptions/00000000-0000-0000-0000-000000000000/"
        "resourceGroups/rg-labeling/providers/Microsoft.MachineLearningServices/workspaces/ws-labeling"
    )
    assert fake.service.uris == [experiment.tracking_uri] and REGION != "swedencentral"
    assert [c.run_id for c in aml.find_candidates(experiment)] == ["AutoML_1_HD_0"]


def test_an_unreachable_workspace_is_one_line_and_changes_nothing(
    aml_env: dict[str, str],
    settings: Settings,
    store: BlobModelStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.publish(tiny_bundle(tmp_path / "cur", seed=7), version="current-v")
    before = pointer(store)
    service = SkillService(settings)
    assert served_version(service) == "current-v"
    fake_aml(monkeypatch, tmp_path, arm=FakeArm(unreachable=True))
    with caplog.at_level(logging.INFO):
        RefreshModel.main(func.timer.TimerRequest(past_due=True))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage().split(": ", 1)[1]
    assert message.startswith(
        "AML is unreachable while opening workspace ws-labeling (resource group rg-labeling) with the system-assigned "
        "managed identity (or the signed-in Azure CLI user): "
    )
    assert "Failed to resolve 'management.azure.com'" in message and "\n" not in message
    assert pointer(store) == before and [i.version for i in store.list_versions()] == ["current-v"]
    service.holder.poll_now()
    assert served_version(service) == "current-v"
    assert cli_main(["refresh"]) == 1
    out, err = capsys.readouterr()
    assert (
        out == ""
        and err.startswith("error: AML is unreachable while opening workspace ws-labeling")
        and err.count("\n") == 1
    )


REFUSED = (
    "ClientSecretCredential.get_token failed: Authentication failed: AADSTS7000215: Invalid client secret provided. "
    "Ensure the secret being sent in the request is the client secret value, not the client secret ID."
)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (
            {"credential": FakeCredential(refuse=REFUSED)},
            f"AML refused the credentials of service principal 11111111-2222 for workspace ws-labeling (resource "
            f"group rg-labeling): {REFUSED}",
        ),
        (
            {"arm": FakeArm({})},
            "AML workspace ws-labeling (resource group rg-labeling) was not found or is not accessible: The Resource "
            "'Microsoft.MachineLearningServices/workspaces/ws-labeling' under resource group 'rg-labeling' was not "
            "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
        ),
        (
            {"arm": FakeArm(forbidden=True)},
            "service principal 11111111-2222 may not read workspace ws-labeling (resource group rg-labeling) (it "
            "needs the Reader role on the workspace): The client 'app' does not have authorization "
            "to perform action 'Microsoft.MachineLearningServices/workspaces/read' over scope '/subscriptions/"
            "00000000-0000-0000-0000-000000000000/resourceGroups/rg-labeling/providers/"
            "Microsoft.MachineLearningServices/workspaces/ws-labeling' or the scope is invalid.",
        ),
    ],
    ids=["refused-credential", "missing-workspace", "no-role"],
)
def test_wrong_credentials_missing_workspace_and_missing_role(
    aml_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    parts: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant")
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "secret-value-never-printed")
    fake_aml(monkeypatch, tmp_path, **parts)
    assert cli_main(["refresh", "--dry-run"]) == 1
    _, err = capsys.readouterr()
    assert err == f"error: {message}\n"
    assert "secret-value-never-printed" not in err


def test_experiment_not_found(
    aml_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXPERIMENT_NAME", "labeling_Training_other")
    fake = fake_aml(monkeypatch, tmp_path)
    assert cli_main(["refresh"]) == 1
    assert capsys.readouterr().err == (
        "error: experiment labeling_Training_other was not found in workspace ws-labeling (resource group "
        "rg-labeling); a labeling project's training experiment is named like labeling_Training_<id>\n"
    )
    assert fake.service.calls == ["get_experiment_by_name labeling_Training_other"]


def test_a_failing_tracking_service_is_one_line(
    aml_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.exceptions import MlflowException

    from tests.fakeaml import FakeTrackingStore

    def unavailable(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/search failed with error code 503 != 200")

    fake_aml(monkeypatch, tmp_path)
    monkeypatch.setattr(FakeTrackingStore, "_search_runs", unavailable)
    assert cli_main(["refresh"]) == 1
    assert capsys.readouterr().err == (
        f"error: AML failed while reading the runs of experiment {EXPERIMENT} in workspace ws-labeling: "
        "MlflowException: API request to endpoint /api/2.0/mlflow/runs/search failed with error code 503 != 200\n"
    )


def test_cli_dry_run_decides_and_publishes_nothing(
    aml_env: dict[str, str],
    store: BlobModelStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    child = automl_child("AutoML_8_HD_0", run_artifacts(tmp_path / "run", 8), 0.91)
    fake = fake_aml(monkeypatch, tmp_path, training_run("AutoML_8", [child], best="AutoML_8_HD_0"))
    assert cli_main(["refresh", "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        "candidate AutoML_8_HD_0 (accuracy 0.9100); current none\n"
        "decision: would publish and promote AutoML_8_HD_0: nothing is current\n"
    )
    assert fake.service.downloads == [] and pointer(store) is None


def test_run_dir_goes_through_the_same_validation_policy_and_publishing(
    settings: Settings, store: BlobModelStore, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    run_dir = run_artifacts(tmp_path / "downloaded-run", 3)
    torch.save({"model_name": "mobilenetv2", "score": 0.87}, run_dir / "train_artifacts" / "model.pt")
    store.publish(tiny_bundle(tmp_path / "cur", seed=7), version="current-v", metric={"name": "accuracy", "value": 0.9})
    kept = refresh_from_run_dir(settings, run_dir, store=store)
    assert kept.metric == {"name": "accuracy", "value": 0.87}
    assert kept.decision == "kept current: accuracy 0.8700 does not beat current-v's 0.9000"
    published = refresh_from_run_dir(Settings(**{**settings.__dict__, "promotion": "newest"}), run_dir, store=store)
    assert published.promoted and published.version is not None and published.version.startswith("m-")
    manifest, _ = store.read_manifest(published.version) or ({}, "")
    assert manifest["source"] == {"kind": "run-dir", "folder": "downloaded-run"}
    assert manifest["metric"] == {"name": "accuracy", "value": 0.87}
    broken = tmp_path / "broken-run"
    write_labels(broken / "train_artifacts" / "labels.json", ["a", "b"])
    tiny_classifier(broken / "train_artifacts" / "model.onnx", classes=4)
    with pytest.raises(AppError, match=r"outputs 4 classes but labels\.json lists 2"):
        refresh_from_run_dir(Settings(**{**settings.__dict__, "promotion": "newest"}), broken, store=store)
    assert (pointer(store) or Pointer("", "", "", None, "")).version == published.version


def test_a_run_with_only_model_pt_is_converted_and_published(
    settings: Settings, store: BlobModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK v2 run keeps its checkpoint in the MLflow model's artifacts."""
    pytest.importorskip("torch")
    from tests.checkpoints import automl_checkpoint

    artifacts = run_artifacts(tmp_path / "run", 1, onnx=False)
    checkpoint = artifacts / "outputs" / "mlflow-model" / "artifacts" / "model.pt"
    checkpoint.parent.mkdir(parents=True)
    automl_checkpoint(checkpoint, "mobilenetv2", ["cat", "dog", "fox", "owl"])
    child = automl_child("AutoML_10_HD_0", artifacts, 0.9)
    fake = fake_aml(monkeypatch, tmp_path, training_run("AutoML_10", [child], best="AutoML_10_HD_0"))
    outcome = refresh_model(settings, store=store)
    assert outcome.promoted and outcome.version == "AutoML_10_HD_0"
    assert sorted(fake.service.downloads) == [
        "AutoML_10_HD_0/outputs/mlflow-model/artifacts/model.pt",
        "AutoML_10_HD_0/outputs/scoring_file_v_1_0_0.py",
    ]
    manifest, _ = store.read_manifest("AutoML_10_HD_0") or ({}, "")
    assert set(manifest["files"]) == {"model.onnx", "labels.json"} and manifest["onnx_opset"] == 14
    assert manifest["source"]["run_id"] == "AutoML_10_HD_0"


AML_KEYS = ("AML_SUBSCRIPTION_ID", "AML_RESOURCE_GROUP", "AML_WORKSPACE_NAME", "AML_EXPERIMENT_NAME", "EXPERIMENT_NAME")


def test_without_aml_the_timer_logs_one_info_line_and_touches_nothing(
    blob_settings: Settings,
    store: BlobModelStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The template's default (no AML workspace): not an error, and no AML call is even attempted."""
    assert blob_settings.blob_connection_string is not None
    monkeypatch.setenv("MODEL_BLOB_CONNECTION_STRING", blob_settings.blob_connection_string)
    monkeypatch.setenv("MODEL_BLOB_CONTAINER", blob_settings.blob_container)
    for key in AML_KEYS:
        monkeypatch.delenv(key, raising=False)
    store.publish(tiny_bundle(tmp_path / "cur", seed=7), version="current-v")
    before = pointer(store)
    fake = fake_aml(monkeypatch, tmp_path)
    with caplog.at_level(logging.DEBUG):
        RefreshModel.main(func.timer.TimerRequest(past_due=False))
    records = [r for r in caplog.records if r.name.startswith("shared")]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        (
            "INFO",
            "refresh: nothing to do: no AML workspace is configured (set AML_SUBSCRIPTION_ID, AML_RESOURCE_GROUP, "
            "AML_WORKSPACE_NAME and AML_EXPERIMENT_NAME to refresh from AML, or set "
            "AzureWebJobs.RefreshModel.Disabled=true to stop this timer)",
        )
    ]
    assert fake.arm.requests == [] and fake.credential.scopes == [] and pointer(store) == before


def test_a_partial_aml_configuration_is_still_an_error_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key in AML_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AML_WORKSPACE_NAME", "ws-labeling")
    monkeypatch.setenv("MODEL_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    with caplog.at_level(logging.INFO, logger="shared.refresh.policy"):
        RefreshModel.main(func.timer.TimerRequest(past_due=False))
    ((level, message),) = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "shared.refresh.policy"]
    assert level == "ERROR"
    assert message.endswith(": AML is not configured: set AML_SUBSCRIPTION_ID, AML_RESOURCE_GROUP, AML_EXPERIMENT_NAME")


@pytest.mark.parametrize(
    ("env", "has_work"),
    [
        ({}, False),
        ({"AML_WORKSPACE_NAME": "ws"}, True),
        ({"EXPERIMENT_NAME": "labeling_Training_1"}, True),
        ({"MODEL_BLOB_ACCOUNT_URL": "https://acct.blob.core.windows.net"}, False),
        ({"SEARCH_ENDPOINT": "https://search.search.windows.net"}, True),
        ({"SEARCH_ENDPOINT": "https://search.search.windows.net", "REINDEX_MODE": "off"}, False),
    ],
)
def test_timer_has_work(env: dict[str, str], has_work: bool) -> None:
    from shared.refresh.policy import timer_has_work

    assert timer_has_work(Settings.from_env(env)) is has_work
