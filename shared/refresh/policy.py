"""RefreshModel's logic: find the best new AutoML model, judge it against the current one, publish it.

Policy (MODEL_PROMOTION): `better` promotes a candidate only when its primary metric beats the current
version's (or nothing is current); `newest` promotes the newest training run's best child. Either way a run
is published at most once (its version name is the run id), nothing is downloaded before the decision,
and a failure anywhere leaves current.json untouched.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.bundle.layout import CHECKPOINT_FILE
from shared.bundle.loader import find_file, load_bundle
from shared.core.errors import AppError
from shared.core.settings import Settings
from shared.inference.factory import load_model, open_model
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.errors import StoreError
from shared.modelstore.pointer import Pointer, Unchanged, default_version, version_from_run_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshOutcome:
    candidate: str | None
    metric: dict[str, Any] | None
    current: str | None
    version: str | None
    decision: str
    published: bool
    promoted: bool
    elapsed_ms: float

    def summary(self) -> str:
        metric = f"{self.metric['name']}={self.metric['value']:.4f}" if self.metric else "none"
        return (
            f"refresh candidate={self.candidate or '-'} metric={metric} current={self.current or '-'} "
            f"decision={self.decision!r} ms={self.elapsed_ms:.0f}"
        )


def judge(policy: str, current: Pointer | None, metric: dict[str, Any] | None) -> tuple[bool, str]:
    """(promote?, why) for a candidate with `metric` against the current pointer."""
    if current is None:
        return True, "nothing is current"
    if policy == "newest":
        return True, "MODEL_PROMOTION=newest"
    ours = current.metric if isinstance(current.metric, dict) else None
    if ours is None or not isinstance(ours.get("value"), int | float):
        return True, f"current version {current.version} has no metric to beat"
    if metric is None:
        return False, f"candidate has no {ours.get('name')} score to compare with {current.version}'s"
    if metric.get("name") != ours.get("name"):
        return False, (
            f"metrics are not comparable ({metric.get('name')} vs {ours.get('name')}); "
            "set MODEL_PROMOTION=newest or promote by hand"
        )
    if float(metric["value"]) > float(ours["value"]):
        return True, f"{metric['name']} {metric['value']:.4f} beats {ours['value']:.4f}"
    return False, f"{metric['name']} {metric['value']:.4f} does not beat {current.version}'s {ours['value']:.4f}"


def _pointer(store: BlobModelStore) -> Pointer | None:
    pointer = store.read_pointer()
    return None if isinstance(pointer, Unchanged) else pointer


def _consider(
    settings: Settings,
    store: BlobModelStore,
    *,
    candidate: str,
    version: str,
    source: dict[str, Any],
    metric: dict[str, Any] | None,
    fetch: Callable[[Path], Path],
    dry_run: bool,
    started: float,
) -> RefreshOutcome:
    def outcome(decision: str, published: bool = False, promoted: bool = False) -> RefreshOutcome:
        return RefreshOutcome(
            candidate=candidate,
            metric=metric,
            current=current.version if current else None,
            version=version,
            decision=decision,
            published=published,
            promoted=promoted,
            elapsed_ms=1000 * (time.monotonic() - started),
        )

    current = _pointer(store)
    if current is not None and current.version == version:
        return outcome("already current")
    if store.read_manifest(version) is not None:
        return outcome(f"already published as {version} and not current; a run is published once (promote it by hand)")
    promote, why = judge(settings.promotion, current, metric)
    if not promote:
        return outcome(f"kept current: {why}")
    if dry_run:
        return outcome(f"would publish and promote {version}: {why}")
    threads = settings.engine_threads or None

    def validate(bundle: Any) -> None:
        open_model(bundle, threads=threads)  # loads, runs one inference, checks labels against the output width

    def still_better(now: Pointer | None, manifest: dict[str, Any]) -> bool:
        return judge(settings.promotion, now, manifest.get("metric"))[0]

    from shared.refresh.checkpoint import servable_folder

    with tempfile.TemporaryDirectory(prefix="refresh-") as tmp:
        folder = fetch(Path(tmp) / "run")
        # A run with only model.pt (or an unusable model.onnx) is converted here, once, before publishing.
        bundle = servable_folder(folder, Path(tmp) / "cache")
        result = store.publish(
            bundle, version=version, source=source, metric=metric, policy=still_better, validate=validate
        )
    if result.promoted:
        return outcome(f"published and promoted {version}: {why}", published=True, promoted=True)
    return outcome(f"published {version} but current.json changed meanwhile and it no longer wins", published=True)


def open_store_for_refresh(settings: Settings) -> BlobModelStore:
    store = BlobModelStore.from_settings(settings)
    if store is None:
        raise StoreError(
            "RefreshModel publishes to the model store: set MODEL_BLOB_CONNECTION_STRING or MODEL_BLOB_ACCOUNT_URL"
        )
    return store


def refresh_model(
    settings: Settings, *, store: BlobModelStore | None = None, dry_run: bool = False, experiment: Any = None
) -> RefreshOutcome:
    """One refresh from the AML labeling experiment. Raises AppError (one clear line) on failure."""
    from shared.refresh import aml

    started = time.monotonic()
    store = store or open_store_for_refresh(settings)
    experiment = experiment if experiment is not None else aml.open_experiment(settings)
    candidates = aml.find_candidates(experiment, limit=1)
    if not candidates:
        raise aml.AmlError(
            f"no completed training run with {aml.MODEL_ONNX} and {aml.LABELS} among the {aml.PARENTS_EXAMINED} "
            f"newest runs of experiment {settings.aml_experiment_name}"
        )
    best = candidates[0]
    version = version_from_run_id(best.run_id)
    if version is None:
        raise aml.AmlError(f"run id {best.run_id!r} cannot name a version")
    return _consider(
        settings,
        store,
        candidate=best.run_id,
        version=version,
        source=best.source,
        metric=best.metric,
        fetch=lambda folder: _fetch_from_aml(best, folder, settings),
        dry_run=dry_run,
        started=started,
    )


def _fetch_from_aml(candidate: Any, folder: Path, settings: Settings) -> Path:
    """Download the candidate's named files; when its model.onnx does not load, add its model.pt so the
    publish step converts that instead."""
    from shared.refresh import aml

    aml.download_candidate(candidate, folder)
    if (folder / aml.MODEL_ONNX).is_file():
        try:
            load_model(folder, threads=settings.engine_threads or None)
        except AppError as exc:
            if aml.download_checkpoint(candidate, folder) is None:
                raise
            logger.warning("run %s: model.onnx is unusable (%s); converting its model.pt", candidate.run_id, exc)
    return folder


# AutoML's primary metric per task (its defaults: accuracy, iou, mean_average_precision for both box tasks).
_PRIMARY_METRIC = {
    "multiclass": "accuracy",
    "multilabel": "iou",
    "object-detection": "mean_average_precision",
    "instance-segmentation": "mean_average_precision",
}


def checkpoint_metric(run_dir: Path, task: str | None) -> dict[str, Any] | None:
    """The primary metric AutoML saved in model.pt (`score`, from about 1.40), if torch is installed.
    `task` None: the checkpoint's own `specs['multilabel']` says which metric it is."""
    checkpoints = [p for p in (run_dir / "train_artifacts" / CHECKPOINT_FILE, run_dir / "outputs" / CHECKPOINT_FILE,
                               run_dir / CHECKPOINT_FILE) if p.is_file()]  # fmt: skip
    if not checkpoints:
        return None
    try:
        import torch
    except ImportError:
        logger.info("torch is not installed: the metric in %s is not read", checkpoints[0])
        return None
    try:
        # An explicit local path given by the user: AutoML checkpoints hold numpy objects and need full unpickling.
        checkpoint = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint only costs the metric
        logger.warning("cannot read %s (%s): no metric", checkpoints[0], exc.__class__.__name__)
        return None
    score = checkpoint.get("score") if isinstance(checkpoint, dict) else None
    try:
        value = float(score) if score is not None else None
    except (TypeError, ValueError):
        value = None
    if value is None:
        return None
    if task is None:
        specs = checkpoint.get("specs") if isinstance(checkpoint, dict) else None
        task = "multilabel" if isinstance(specs, dict) and specs.get("multilabel") else "multiclass"
    return {"name": _PRIMARY_METRIC.get(task, "accuracy"), "value": value}


def refresh_from_run_dir(
    settings: Settings, run_dir: Path, *, store: BlobModelStore | None = None, dry_run: bool = False
) -> RefreshOutcome:
    """The same validation, policy and publishing for a run folder downloaded by hand (or SDK v2 / MLflow)."""
    started = time.monotonic()
    store = store or open_store_for_refresh(settings)
    from shared.refresh.checkpoint import servable_folder

    kept = _kept_before_converting(settings, store, run_dir, started)
    if kept is not None:
        return kept
    with tempfile.TemporaryDirectory(prefix="refresh-") as tmp:
        servable = servable_folder(run_dir, Path(tmp))  # converted once here when the run only has model.pt
        bundle = load_bundle(servable)
        metric = checkpoint_metric(run_dir, bundle.task)
        source = {"kind": "run-dir", "folder": run_dir.resolve().name}
        return _consider(
            settings,
            store,
            candidate=str(run_dir),
            version=default_version(bundle, source),
            source=source,
            metric=metric,
            fetch=lambda folder: servable,
            dry_run=dry_run,
            started=started,
        )


def _kept_before_converting(
    settings: Settings, store: BlobModelStore, run_dir: Path, started: float
) -> RefreshOutcome | None:
    """For a run that would need its model.pt converted: the "kept current" outcome when the policy keeps
    the current version anyway (conversion takes a minute and torch), else None to go on."""
    try:
        load_model(run_dir, threads=settings.engine_threads or None)
        return None  # its model.onnx is served as it is: nothing to convert
    except AppError:
        if find_file(run_dir, CHECKPOINT_FILE) is None:
            return None  # nothing to convert either: the normal path reports what is wrong
    metric = checkpoint_metric(run_dir, None)
    current = _pointer(store)
    promote, why = judge(settings.promotion, current, metric)
    if promote:
        return None
    return RefreshOutcome(
        candidate=str(run_dir),
        metric=metric,
        current=current.version if current else None,
        version=None,
        decision=f"kept current: {why} (model.pt not converted)",
        published=False,
        promoted=False,
        elapsed_ms=1000 * (time.monotonic() - started),
    )


def timer_has_work(settings: Settings) -> bool:
    """Whether RefreshModel's timer has anything to do with these settings: an AML workspace to poll, or a search
    index to re-enrich when the current version changes (`REINDEX_MODE`, see shared.search.reindex).

    infra/main.bicep holds the same condition (`refreshHasWork`) and disables the timer
    (`AzureWebJobs.RefreshModel.Disabled`) when it is false, so that a Flex Consumption app is not woken every
    tick for nothing.
    """
    return settings.aml_requested or settings.reindex_mode != "off"


def run_scheduled(past_due: bool = False) -> RefreshOutcome | None:
    """The timer's entry point: one summary line when it worked, one error line when it did not, one INFO line
    when there is nothing to do (no AML workspace configured: not an error, models are then published by hand)."""
    started = time.monotonic()
    try:
        settings = Settings.from_env()
        if not settings.aml_requested:
            if timer_has_work(settings):
                logger.info("refresh: no AML workspace is configured; this timer only re-enriches the search index")
            else:
                logger.info(
                    "refresh: nothing to do: no AML workspace is configured (set AML_SUBSCRIPTION_ID, "
                    "AML_RESOURCE_GROUP, AML_WORKSPACE_NAME and AML_EXPERIMENT_NAME to refresh from AML, or set "
                    "AzureWebJobs.RefreshModel.Disabled=true to stop this timer)"
                )
            return None
        outcome = refresh_model(settings)
    except AppError as exc:
        logger.error("refresh failed after %.0f ms: %s", 1000 * (time.monotonic() - started), exc)
        return None
    logger.info("%s%s", outcome.summary(), " (past due)" if past_due else "")
    return outcome
