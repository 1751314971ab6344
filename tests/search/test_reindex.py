"""Re-enrichment: the model store on a real Azurite, the search service a stand-in on 127.0.0.1
(tests/searchstub.py) reached through azure-search-documents, the clock injected."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import RefreshModel
from shared import cli
from shared.cli.search import main_search_setup
from shared.core.settings import Settings
from shared.modelstore.blobstore import BlobModelStore
from shared.modelstore.pointer import Pointer
from shared.refresh import policy as refresh
from shared.search.record import pointer_since, read_reindex_record, write_reindex_record
from shared.search.reindex import (
    CLAIM_EXPIRES_S,
    PREVIEW_API_VERSION,
    IndexerState,
    ReindexError,
    SearchService,
    run_pass,
)
from tests.azurite import free_port
from tests.modelfactory import tiny_bundle
from tests.searchstub import SearchStub

GA = "2026-04-01"  # azure-search-documents 12.0.0's default api-version
INDEXER = "/indexers('automl-images-indexer')"
STATUS = ("GET", f"{INDEXER}/search.status")
RESET = ("POST", f"{INDEXER}/search.reset")
RUN = ("POST", f"{INDEXER}/search.run")
DEFINITION = ("GET", INDEXER)
RESET_SKILLS = ("POST", "/skillsets('automl-images-skillset')/search.resetskills")
CACHE = {"storageConnectionString": "ResourceId=/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/"
         "storageAccounts/cache;", "enableReprocessing": True}  # fmt: skip
DELAY_S = 180.0


class Clock:
    """Seconds since the epoch, set by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def stub(search_stubs: Any) -> SearchStub:
    return search_stubs(pipeline=True)


@pytest.fixture
def settings(blob_settings: Settings, stub: SearchStub) -> Settings:
    return with_(
        blob_settings,
        search_endpoint=stub.endpoint,
        search_admin_key=stub.key,
        reindex_mode="full",
        reindex_delay_s=DELAY_S,
    )


@pytest.fixture
def store(settings: Settings) -> BlobModelStore:
    found = BlobModelStore.from_settings(settings)
    assert found is not None
    found.ensure_container()
    return found


def with_(settings: Settings, **changes: Any) -> Settings:
    return Settings(**{**settings.__dict__, **changes})


def publish(store: BlobModelStore, tmp_path: Path, version: str, seed: int) -> Pointer:
    store.publish(tiny_bundle(tmp_path / version, seed=seed), version=version)
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer) and pointer.version == version
    return pointer


def after_delay(store: BlobModelStore, clock: Clock, extra_s: float = 1.0) -> None:
    pointer = store.read_pointer()
    assert isinstance(pointer, Pointer)
    clock.t = pointer_since(store, pointer) + DELAY_S + extra_s


def a_pass(settings: Settings, store: BlobModelStore, clock: Clock, **kwargs: Any) -> Any:
    return run_pass(settings, store, SearchService.from_settings(settings), clock=clock, **kwargs)


def baseline(settings: Settings, store: BlobModelStore, tmp_path: Path, clock: Clock, stub: SearchStub) -> None:
    """v1 published and taken as the baseline, then v2 published and past the delay; no request recorded."""
    publish(store, tmp_path, "v1", seed=1)
    assert a_pass(settings, store, clock).action == "baseline"
    publish(store, tmp_path, "v2", seed=2)
    after_delay(store, clock)
    stub.requests.clear()


def recorded(store: BlobModelStore) -> tuple[str, str | None] | None:
    record = read_reindex_record(store)
    return None if record is None else (record.version, record.pending)


# -- the pass ---------------------------------------------------------------------------------------------


def test_the_first_pass_takes_the_current_version_as_baseline_and_calls_nothing(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    publish(store, tmp_path, "v1", seed=1)
    clock = Clock()
    after_delay(store, clock)
    outcome = a_pass(settings, store, clock)
    assert (outcome.action, outcome.message) == (
        "baseline",
        "took v1 as the baseline: the index is re-enriched from the next version on",
    )
    assert recorded(store) == ("v1", None) and stub.requests == []
    assert a_pass(settings, store, clock).message.startswith("nothing to do: the index was re-enriched with v1 (")
    assert stub.requests == []


def test_nothing_is_published_yet(settings: Settings, store: BlobModelStore, stub: SearchStub) -> None:
    outcome = a_pass(settings, store, Clock())
    assert outcome.action == "no-model" and recorded(store) is None and stub.requests == []


def test_inside_the_delay_the_pass_waits_and_calls_nothing(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    clock.t -= 100  # v2 has been current for 81 s of the 180
    outcome = a_pass(settings, store, clock)
    assert outcome.action == "waiting"
    assert outcome.message == (
        "waiting: v2 became current 81 s ago; the index is re-enriched with it once every instance serves it, "
        "after 180 s (REINDEX_DELAY_SECONDS)"
    )
    assert stub.requests == [] and recorded(store) == ("v1", None)
    # --now ignores the delay.
    assert a_pass(settings, store, clock, now=True).action == "done"


def test_a_full_pass_resets_and_runs_the_indexer_once(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    outcome = a_pass(settings, store, clock)
    assert (outcome.action, outcome.message) == (
        "done",
        "re-enriching the index with v2 (was v1): reset indexer 'automl-images-indexer' and started a run",
    )
    assert stub.calls() == [STATUS, RESET, RUN]
    for request in stub.requests:
        assert request.query == {"api-version": GA}
        assert request.headers["api-key"] == stub.key
        assert request.headers["User-Agent"].startswith("automl-image-skill-reindex azsdk-python-search-documents/")
        assert request.body is None
    record = read_reindex_record(store)
    assert record is not None and (record.version, record.mode, record.pending) == ("v2", "full", None)
    # Exactly once: the passes during the run only read its status, the first after it records it as finished
    # (the vectorizer's switch), and the next ones call nothing.
    stub.requests.clear()
    assert a_pass(settings, store, clock).action == "running"
    assert stub.calls() == [STATUS]
    stub.finish_run(end=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.t + 600)))
    clock.t += 3600
    assert a_pass(settings, store, clock).action == "finished"
    stub.requests.clear()
    assert a_pass(settings, store, clock).action == "nothing"
    assert stub.requests == [] and stub.indexers["automl-images-indexer"].resets == 1


def test_a_skills_pass_resets_only_the_classify_skill(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    stub.add_pipeline(cache=CACHE)
    skills = with_(settings, reindex_mode="skills")
    clock = Clock()
    baseline(skills, store, tmp_path, clock, stub)
    outcome = a_pass(skills, store, clock)
    assert outcome.message == (
        "re-enriching the index with v2 (was v1): reset skill 'classify-images' and started indexer "
        "'automl-images-indexer'"
    )
    assert stub.calls() == [DEFINITION, STATUS, RESET_SKILLS, RUN]
    versions = [r.query["api-version"] for r in stub.requests]
    assert versions == [PREVIEW_API_VERSION, GA, PREVIEW_API_VERSION, GA]
    assert [r.body for r in stub.requests] == [None, None, {"skillNames": ["classify-images"]}, None]
    assert all(r.headers["api-key"] == stub.key for r in stub.requests)
    assert stub.requests[2].headers["Content-Type"] == "application/json"
    assert stub.indexers["automl-images-indexer"].resets == 0
    assert recorded(store) == ("v2", None)


def test_search_setup_with_enrichment_cache_then_a_skills_pass_works_end_to_end(
    settings: Settings,
    store: BlobModelStore,
    stub: SearchStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What a user does: `search-setup --enrichment-cache` on an empty service, then REINDEX_MODE=skills. The
    pass accepts the cache search-setup wrote, and Reset Skills names a skill the written skillset has."""
    from tests.search.test_searchsetup import namespace

    stub.indexers.clear()
    stub.skillsets.clear()
    stub.indexes.clear()
    env = {"SEARCH_ADMIN_KEY": stub.key, "SKILL_FUNCTION_KEY": "fk-not-a-secret"}
    assert main_search_setup(namespace(search_endpoint=stub.endpoint, enrichment_cache=True), env) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "indexer automl-images-indexer: created"
    skills = with_(settings, reindex_mode="skills")
    clock = Clock()
    baseline(skills, store, tmp_path, clock, stub)
    # The service runs a new indexer at once: the first pass waits for that run.
    assert a_pass(skills, store, clock).action == "deferred"
    stub.finish_run()
    stub.requests.clear()
    outcome = a_pass(skills, store, clock)
    assert (outcome.action, outcome.current) == ("done", "v2")
    assert stub.calls() == [DEFINITION, STATUS, RESET_SKILLS, RUN]
    assert stub.requests[2].body == {"skillNames": ["classify-images"]}
    assert stub.indexers["automl-images-indexer"].resets == 0
    assert recorded(store) == ("v2", None)


def test_skills_without_a_cache_is_one_error_naming_the_fix_and_nothing_else(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    skills = with_(settings, reindex_mode="skills")
    clock = Clock()
    baseline(skills, store, tmp_path, clock, stub)
    with pytest.raises(ReindexError) as raised:
        a_pass(skills, store, clock)
    assert str(raised.value) == (
        "REINDEX_MODE=skills needs an enrichment cache on indexer 'automl-images-indexer', and it has none: run "
        "`python -m shared search-setup --enrichment-cache`, or set REINDEX_MODE=full"
    )
    assert stub.calls() == [DEFINITION] and stub.requests[0].query == {"api-version": PREVIEW_API_VERSION}
    assert recorded(store) == ("v1", None)


def test_a_running_indexer_defers_the_pass_and_the_next_one_goes_on(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    stub.set_running()
    outcome = a_pass(settings, store, clock)
    assert (outcome.action, outcome.message) == (
        "deferred",
        "deferred: indexer 'automl-images-indexer' is running; the next pass re-enriches with v2",
    )
    assert stub.calls() == [STATUS] and recorded(store) == ("v1", None)
    stub.finish_run()
    assert a_pass(settings, store, clock).action == "done"
    assert stub.calls() == [STATUS, STATUS, RESET, RUN]


def test_a_409_on_run_defers_and_releases_the_claim(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    service = SearchService.from_settings(settings)
    real_state = service.state

    def state_then_a_scheduled_run_starts() -> IndexerState:
        seen = real_state()
        stub.set_running()  # the indexer's own schedule starts a run between the status and our run
        return seen

    service.state = state_then_a_scheduled_run_starts  # type: ignore[method-assign]
    outcome = run_pass(settings, store, service, clock=clock)
    assert (outcome.action, outcome.message) == (
        "deferred",
        "deferred: indexer 'automl-images-indexer' started running meanwhile (409); the next pass re-enriches with v2",
    )
    assert stub.calls() == [STATUS, RESET, RUN] and recorded(store) == ("v1", None)
    stub.finish_run()
    assert a_pass(settings, store, clock).action == "done" and recorded(store) == ("v2", None)


def test_a_rollback_is_a_change_like_any_other(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    assert a_pass(settings, store, clock).action == "done"
    stub.finish_run()
    store.promote("v1")
    after_delay(store, clock)
    stub.requests.clear()
    outcome = a_pass(settings, store, clock)
    assert outcome.message.startswith("re-enriching the index with v1 (was v2): ")
    assert stub.calls() == [STATUS, RESET, RUN] and recorded(store) == ("v1", None)


def test_dry_run_makes_only_get_requests_and_writes_nothing(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    stub.add_pipeline(cache=CACHE)
    clock = Clock()
    publish(store, tmp_path, "v1", seed=1)
    assert a_pass(settings, store, clock, dry_run=True).message == (
        "would take v1 as the baseline; nothing to re-enrich"
    )
    assert recorded(store) is None
    baseline(settings, store, tmp_path, clock, stub)
    for mode, what in [
        ("full", "reset indexer 'automl-images-indexer' and run it"),
        ("skills", "reset skill 'classify-images' of skillset 'automl-images-skillset' and run indexer "
                   "'automl-images-indexer'"),
    ]:  # fmt: skip
        outcome = a_pass(with_(settings, reindex_mode=mode), store, clock, dry_run=True)
        assert outcome.message == f"would {what} (mode {mode}): the index holds v1, current is v2"
    assert {method for method, _ in stub.calls()} == {"GET"}
    assert recorded(store) == ("v1", None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"search_admin_key": "not-the-key"},
            "search service {endpoint} refused SEARCH_ADMIN_KEY (403) while reading the status of indexer "
            "'automl-images-indexer': set it to an admin key of this service (not a query key), or remove it to use "
            "the managed identity",
        ),
        (
            {"search_indexer_name": "no-such-indexer"},
            "indexer 'no-such-indexer' does not exist on search service {endpoint}: set SEARCH_INDEXER_NAME to its "
            "name, or create it with `python -m shared search-setup`",
        ),
    ],
)
def test_a_refused_key_or_unknown_name_is_one_error_and_the_next_pass_succeeds(
    settings: Settings,
    store: BlobModelStore,
    stub: SearchStub,
    tmp_path: Path,
    change: dict[str, str],
    message: str,
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    with pytest.raises(ReindexError) as raised:
        a_pass(with_(settings, **change), store, clock)
    assert str(raised.value) == message.format(endpoint=stub.endpoint)
    assert stub.key not in str(raised.value) and "not-the-key" not in str(raised.value)
    assert recorded(store) == ("v1", None)
    assert a_pass(settings, store, clock).action == "done" and recorded(store) == ("v2", None)


def test_an_unreachable_service_is_one_error_and_the_next_pass_succeeds(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReindexError) as raised:
        a_pass(with_(settings, search_endpoint=nowhere), store, clock)
    assert str(raised.value).startswith(
        f"search service {nowhere} is unreachable while reading the status of indexer 'automl-images-indexer' ("
    )
    assert "\n" not in str(raised.value) and recorded(store) == ("v1", None)
    assert a_pass(settings, store, clock).action == "done"


def test_a_failure_after_the_claim_releases_it_so_the_next_pass_retries(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    stub.add_pipeline(cache=CACHE)
    skills = with_(settings, reindex_mode="skills", search_skill_name="no-such-skill")
    clock = Clock()
    baseline(skills, store, tmp_path, clock, stub)
    with pytest.raises(ReindexError) as raised:
        a_pass(skills, store, clock)
    assert str(raised.value) == (
        f"search service {stub.endpoint} answered 400 while resetting skill 'no-such-skill' of skillset "
        "'automl-images-skillset': One or more skills in 'skillNames' do not exist in skillset "
        "'automl-images-skillset'."
    )
    assert stub.calls() == [DEFINITION, STATUS, RESET_SKILLS] and recorded(store) == ("v1", None)
    assert a_pass(with_(skills, search_skill_name="classify-images"), store, clock).action == "done"


def test_a_claim_defers_other_passes_until_it_expires(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    record = read_reindex_record(store)
    assert record is not None
    # A pass that claimed v2 ten seconds ago and died before recording it.
    claimed_at = float(int(clock.t)) - 10
    claimed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claimed_at))
    write_reindex_record(store, version="v1", mode=record.mode, expected=record, pending="v2", claimed=claimed)
    outcome = a_pass(settings, store, clock)
    assert outcome.message == f"deferred: another pass is re-enriching the index with v2 (claimed {claimed})"
    assert stub.requests == []
    clock.t = claimed_at + CLAIM_EXPIRES_S - 1
    assert a_pass(settings, store, clock).action == "deferred"
    clock.t = claimed_at + CLAIM_EXPIRES_S + 1
    assert a_pass(settings, store, clock).action == "done" and recorded(store) == ("v2", None)


def test_two_passes_racing_reset_the_indexer_once(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    first = SearchService.from_settings(settings)
    real_state = first.state
    inner: list[Any] = []

    def state_while_another_pass_runs() -> IndexerState:
        seen = real_state()  # the first pass has read the record and sees an idle indexer ...
        inner.append(a_pass(settings, store, clock))  # ... when a second pass does everything
        return seen

    first.state = state_while_another_pass_runs  # type: ignore[method-assign]
    outcome = run_pass(settings, store, first, clock=clock)
    assert inner[0].action == "done"
    assert (outcome.action, outcome.message) == ("deferred", "deferred: another pass is re-enriching the index with v2")
    assert stub.calls() == [STATUS, STATUS, RESET, RUN] and stub.indexers["automl-images-indexer"].resets == 1
    assert recorded(store) == ("v2", None)


def test_two_passes_in_threads_reset_the_indexer_once(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    start = threading.Barrier(2)
    outcomes: list[Any] = []

    def one_pass() -> None:
        start.wait()
        outcomes.append(a_pass(settings, store, clock))

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Whatever the interleaving: one pass re-enriches, the other finds it claimed, running, or done.
    assert sorted(o.action for o in outcomes) in (["deferred", "done"], ["done", "nothing"])
    assert stub.indexers["automl-images-indexer"].resets == 1 and stub.calls().count(RUN) == 1
    assert recorded(store) == ("v2", None)


def test_status_counts_documents_classified_by_another_version(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    from shared.search.reindex import read_status

    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)
    stub.indexes["automl-images-index"] = [
        {"images": [{"modelVersion": "v1"}]},
        {"images": [{"modelVersion": "v2"}, {"modelVersion": "v1"}]},
        {"images": [{"modelVersion": "v2"}]},
        {"images": [{"modelVersion": None}]},  # an image the skill could not classify
        {"images": []},
    ]
    status = read_status(settings, store, SearchService.from_settings(settings))
    assert (status.current, status.stale, status.indexer.describe()) == ("v2", 2, "running, never run")
    assert status.recorded is not None and status.recorded.version == "v1"
    search = stub.requests[-1]
    assert (search.method, search.path) == ("POST", "/indexes('automl-images-index')/docs/search.post.search")
    assert search.body == {
        "search": "*",
        "count": True,
        "filter": "images/any(i: i/modelVersion ne null and i/modelVersion ne 'v2')",
        "top": 0,
    }


# -- RefreshModel's tick ------------------------------------------------------------------------------------


@pytest.fixture
def timer_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app settings of a deployment with re-enrichment and without AML."""
    for name in ("AML_SUBSCRIPTION_ID", "AML_RESOURCE_GROUP", "AML_WORKSPACE_NAME", "AML_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert settings.blob_connection_string is not None and settings.search_endpoint is not None
    monkeypatch.setenv("MODEL_BLOB_CONNECTION_STRING", settings.blob_connection_string)
    monkeypatch.setenv("MODEL_BLOB_CONTAINER", settings.blob_container)
    monkeypatch.setenv("SEARCH_ENDPOINT", settings.search_endpoint)
    monkeypatch.setenv("SEARCH_ADMIN_KEY", settings.search_admin_key or "")
    monkeypatch.setenv("REINDEX_DELAY_SECONDS", "0")


def reindex_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shared.search.reindex"]


@pytest.mark.usefixtures("timer_env")
def test_the_timer_runs_a_pass_on_every_tick_without_aml(
    store: BlobModelStore, stub: SearchStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish(store, tmp_path, "v1", seed=1)
    with caplog.at_level(logging.INFO):
        RefreshModel.main(func.timer.TimerRequest(past_due=False))
    assert reindex_lines(caplog) == [
        "reindex: took v1 as the baseline: the index is re-enriched from the next version on"
    ]
    publish(store, tmp_path, "v2", seed=2)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        RefreshModel.main(func.timer.TimerRequest(past_due=False))
    assert reindex_lines(caplog) == [
        "reindex: re-enriching the index with v2 (was v1): reset indexer 'automl-images-indexer' and started a run"
    ]
    assert stub.calls() == [STATUS, RESET, RUN] and recorded(store) == ("v2", None)


@pytest.mark.usefixtures("timer_env")
def test_a_failing_refresh_does_not_stop_the_pass_and_a_failing_pass_is_one_line(
    store: BlobModelStore,
    stub: SearchStub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(past_due: bool = False) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(refresh, "run_scheduled", broken)
    publish(store, tmp_path, "v1", seed=1)
    with caplog.at_level(logging.INFO):
        RefreshModel.main(func.timer.TimerRequest(past_due=True))
    assert [r.getMessage() for r in caplog.records if r.name == "RefreshModel"] == [
        "refresh failed unexpectedly: RuntimeError"
    ]
    assert reindex_lines(caplog)[0].startswith("reindex: took v1")
    publish(store, tmp_path, "v2", seed=2)
    monkeypatch.setenv("SEARCH_ADMIN_KEY", "not-the-key")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        RefreshModel.main(func.timer.TimerRequest(past_due=False))
    errors = [r for r in caplog.records if r.name == "shared.search.reindex"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR and errors[0].exc_info is None
    refused = f"search service {stub.endpoint} refused SEARCH_ADMIN_KEY"
    assert errors[0].getMessage().split(": ", 1)[1].startswith(refused)
    assert "not-the-key" not in caplog.text and recorded(store) == ("v1", None)


def test_the_timer_is_silent_about_reindex_when_it_is_off(
    blob_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SEARCH_ENDPOINT", raising=False)
    monkeypatch.delenv("REINDEX_MODE", raising=False)
    with caplog.at_level(logging.DEBUG):
        RefreshModel.main(func.timer.TimerRequest(past_due=False))
    assert reindex_lines(caplog) == []


# -- the command line ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("timer_env")
def test_cli_pass_now_dry_run_and_status(
    store: BlobModelStore,
    stub: SearchStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REINDEX_DELAY_SECONDS", "3600")
    publish(store, tmp_path, "v1", seed=1)
    assert cli.main(["reindex"]) == 0
    assert capsys.readouterr().out == "took v1 as the baseline: the index is re-enriched from the next version on\n"
    publish(store, tmp_path, "v2", seed=2)
    assert cli.main(["reindex"]) == 0
    assert capsys.readouterr().out.startswith("waiting: v2 became current ")
    assert cli.main(["reindex", "--now", "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        "would reset indexer 'automl-images-indexer' and run it (mode full): the index holds v1, current is v2\n"
    )
    assert stub.calls() == [STATUS]
    stub.indexes["automl-images-index"] = [{"images": [{"modelVersion": "v1"}]}, {"images": [{"modelVersion": "v2"}]}]
    assert cli.main(["reindex", "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "current version: v2"
    assert lines[1].startswith("last re-enriched with: v1 (baseline, ")
    assert lines[2:] == [
        "indexer automl-images-indexer: running, never run",
        "documents with an image classified by another version than v2: 1",
    ]
    assert cli.main(["reindex", "--now"]) == 0
    assert capsys.readouterr().out == (
        "re-enriching the index with v2 (was v1): reset indexer 'automl-images-indexer' and started a run\n"
    )
    assert cli.main(["reindex", "--now"]) == 0
    assert capsys.readouterr().out.startswith(
        "re-enriching with v2: indexer 'automl-images-indexer' is running, a run is in progress; the vectorizer "
        "answers with v1 until a run started after "
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEARCH_ADMIN_KEY": "not-the-key"}, "error: search service {endpoint} refused SEARCH_ADMIN_KEY (403) "),
        ({"SEARCH_INDEXER_NAME": "missing"}, "error: indexer 'missing' does not exist on search service {endpoint}: "),
        ({"SEARCH_ENDPOINT": ""}, "error: re-enrichment is off: set SEARCH_ENDPOINT to the search service's URL\n"),
        (
            {"REINDEX_MODE": "off"},
            "error: re-enrichment is off (REINDEX_MODE=off): set REINDEX_MODE to full or skills\n",
        ),
    ],
)
@pytest.mark.usefixtures("timer_env")
def test_cli_errors_are_one_line_and_exit_1(
    store: BlobModelStore,
    stub: SearchStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    publish(store, tmp_path, "v1", seed=1)
    assert cli.main(["reindex"]) == 0
    publish(store, tmp_path, "v2", seed=2)
    capsys.readouterr()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["reindex", "--now"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(message.format(endpoint=stub.endpoint))
    assert captured.err.count("\n") == 1 and "not-the-key" not in captured.err
    assert recorded(store) == ("v1", None)


def test_cli_unreachable_service(
    timer_env: None, store: BlobModelStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SEARCH_ENDPOINT", nowhere)
    assert cli.main(["reindex", "--status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: search service {nowhere} is unreachable while reading the status of indexer ")
    assert err.count("\n") == 1


def test_a_new_width_of_embedding_stops_the_pass_in_one_line(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    """The index's vector field holds the old model's width: re-enriching with a model of another width would have
    every document's vector refused, so the pass says what to do and changes nothing."""
    clock = Clock()
    store.publish(tiny_bundle(tmp_path / "v1", seed=1), version="v1")  # 3-wide embedding (its 3 channels)
    assert a_pass(settings, store, clock).action == "baseline"
    stub.definitions["indexes"]["automl-images-index"]["fields"].append(
        {"name": "imageEmbedding", "type": "Collection(Edm.Single)", "searchable": True, "dimensions": 3,
         "vectorSearchProfile": "image-embedding-profile"}
    )  # fmt: skip
    store.publish(tiny_bundle(tmp_path / "v2", rank=2), version="v2")  # 16-wide
    after_delay(store, clock)
    stub.requests.clear()
    with pytest.raises(ReindexError) as raised:
        a_pass(settings, store, clock)
    assert str(raised.value) == (
        "model v2 embeds images in 16 dimensions but 'imageEmbedding' of index 'automl-images-index' holds 3: a "
        "vector field's dimensions cannot change, so nothing was re-enriched; create a new index with `python -m "
        "shared search-setup --vectors --prefix <new prefix>` and point SEARCH_INDEX_NAME at it"
    )
    assert stub.calls() == [STATUS, ("GET", "/indexes('automl-images-index')")]
    assert recorded(store) == ("v1", None) and stub.indexers["automl-images-indexer"].resets == 0


def test_the_same_width_reads_no_index(
    settings: Settings, store: BlobModelStore, stub: SearchStub, tmp_path: Path
) -> None:
    clock = Clock()
    baseline(settings, store, tmp_path, clock, stub)  # v1 and v2: both 3 wide
    assert a_pass(settings, store, clock).action == "done"
    assert stub.calls() == [STATUS, RESET, RUN]
