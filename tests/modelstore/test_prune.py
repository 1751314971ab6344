"""`prune` and `publish --dry-run` against a real Azurite: what goes, what always stays, and nothing written by
a dry run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.cli import main
from shared.core.settings import Settings
from shared.modelstore.blobstore import INCOMPLETE_GRACE_S, BlobModelStore, VersionInfo, plan_prune
from shared.search.record import read_reindex_record, write_reindex_record
from tests.modelfactory import tiny_bundle

pytestmark = pytest.mark.integration  # Azurite


@pytest.fixture
def bundles(tmp_path: Path) -> list[Path]:
    return [tiny_bundle(tmp_path / f"b{i}", seed=i) for i in range(5)]


@pytest.fixture
def cli_store(blob_settings: Settings, store: BlobModelStore, monkeypatch: pytest.MonkeyPatch) -> BlobModelStore:
    """`store`, named to the command line by its settings (and no local.settings.json)."""
    monkeypatch.setattr("shared.core.settings.LOCAL_SETTINGS", Path("/nonexistent/local.settings.json"))
    monkeypatch.setenv("MODEL_BLOB_CONNECTION_STRING", str(blob_settings.blob_connection_string))
    monkeypatch.setenv("MODEL_BLOB_CONTAINER", blob_settings.blob_container)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(blob_settings.cache_dir))
    return store


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def names(store: BlobModelStore) -> list[str]:
    return sorted(b.name for b in store.container.list_blobs())


def test_prune_keeps_the_newest_the_current_and_the_reindexed_versions(
    cli_store: BlobModelStore, bundles: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store = cli_store
    for index, bundle in enumerate(bundles):
        store.publish(bundle, version=f"v{index}")
    store.promote("v1")  # a rollback: the current version is an old one
    write_reindex_record(store, version="v0", mode="full", expected=None)  # the index was re-enriched with v0
    record = read_reindex_record(store)
    assert record is not None
    write_reindex_record(store, version="v0", mode="full", expected=record, pending="v2", claimed="x")
    before = names(store)

    code, out, err = run(capsys, "prune", "--keep", "1", "--dry-run")
    assert (code, err) == (0, "")
    assert names(store) == before  # a dry run deletes nothing
    lines = out.splitlines()
    assert lines[0] == f"versions in {store.description}, oldest first:"
    plan = [line.split()[:3] if line.split()[0] == "would" else line.split()[:2] for line in lines[1:-1]]
    assert plan == [
        ["keep", "v0"],
        ["keep", "v1"],
        ["keep", "v2"],
        ["would", "delete", "v3"],
        ["keep", "v4"],
    ]
    assert "the version re-enrichment last recorded (reindex.json)" in lines[1]
    assert lines[2].endswith("current") and "being re-enriched now (reindex.json)" in lines[3]
    assert "one of the 1 newest" in lines[5]
    assert lines[-1].startswith("would delete 1 of 5 versions (") and lines[-1].endswith(
        "nothing was changed (--dry-run)"
    )

    code, out, err = run(capsys, "prune", "--keep", "1")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1].startswith("deleted 1 of 5 versions (")
    assert [v.version for v in store.list_versions()] == ["v0", "v1", "v2", "v4"]
    assert not any(name.startswith("v3/") for name in names(store))
    assert store.read_pointer().version == "v1"  # type: ignore[union-attr]

    # --older-than 0 with --keep 0: everything that is not always kept goes.
    code, out, _ = run(capsys, "prune", "--keep", "0", "--older-than", "0")
    assert code == 0 and [v.version for v in store.list_versions()] == ["v0", "v1", "v2"]


def test_prune_with_a_long_older_than_deletes_nothing_new(
    cli_store: BlobModelStore, bundles: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for index, bundle in enumerate(bundles[:3]):
        cli_store.publish(bundle, version=f"v{index}")
    code, out, _ = run(capsys, "prune", "--older-than", "30")
    assert code == 0 and [v.version for v in cli_store.list_versions()] == ["v0", "v1", "v2"]
    assert out.count("created less than 30 days ago") == 2
    assert out.splitlines()[-1] == "deleted 0 of 3 versions (0 bytes); 3 kept"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune"], "error: prune needs --keep N (the N newest versions stay), --older-than DAYS, or both\n"),
        (["prune", "--keep", "-1"], "argument --keep: must be 0 or more, got '-1'"),
        (["prune", "--older-than", "soon"], "argument --older-than: expected a number of days, 0 or more, got 'soon'"),
    ],
)
def test_prune_needs_a_rule(
    cli_store: BlobModelStore, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's own usage error
        code = int(exited.code or 0)
        assert code == 2
    else:
        assert code == 1
    assert message in capsys.readouterr().err


def test_delete_version_refuses_the_current_one(cli_store: BlobModelStore, bundles: list[Path]) -> None:
    from shared.modelstore.errors import StoreError

    cli_store.publish(bundles[0], version="v0")
    with pytest.raises(StoreError, match=r"version v0 is current in .*; promote another before deleting it"):
        cli_store.delete_version("v0")


def _info(version: str, created: str | None, complete: bool = True) -> VersionInfo:
    return VersionInfo(version=version, complete=complete, created=created, size_bytes=10)


def test_plan_prune_by_age_and_count() -> None:
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    versions = [
        _info("old", "2026-12-01T00:00:00Z"),
        _info("half", "2027-01-10T00:00:00Z"),
        _info("stuck", None, complete=False),
        _info("fresh-upload", None, complete=False),
        _info("new", "2027-01-15T07:00:00Z"),
    ]
    modified = {"stuck": now - 2 * INCOMPLETE_GRACE_S, "fresh-upload": now - 60}

    def plan(**rules: Any) -> list[str]:
        steps = plan_prune(versions, current=None, protected={}, now=now, modified=modified, **rules)
        return [s.info.version for s in steps if s.delete]

    assert plan(keep=None, older_than_s=7 * 86_400) == ["old"]
    assert plan(keep=None, older_than_s=86_400) == ["old", "half"]  # "stuck" changed 2 h ago
    assert plan(keep=1, older_than_s=None) == ["old", "half", "stuck"]
    assert plan(keep=2, older_than_s=None) == ["old", "stuck"]
    assert plan(keep=0, older_than_s=None) == ["old", "half", "stuck", "new"]
    # both: only what both rules let go
    assert plan(keep=1, older_than_s=7 * 86_400) == ["old"]


def test_publish_dry_run_says_what_it_would_upload_and_writes_nothing(
    cli_store: BlobModelStore, bundles: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "publish", str(bundles[0]), "--version", "v1", "--dry-run")
    assert (code, err) == (0, "")
    assert names(cli_store) == []  # not even the container's content
    lines = out.splitlines()
    assert lines[0].startswith(f"would upload version v1 to {cli_store.description}: 2 files, ")
    assert [line.split()[0] for line in lines[1:4]] == ["v1/labels.json", "v1/model.onnx", "v1/manifest.json"]
    assert lines[-2:] == [
        "would point current.json to v1 (nothing is current yet)",
        "nothing was changed (--dry-run)",
    ]

    cli_store.publish(bundles[0], version="v1")
    code, out, _ = run(capsys, "publish", str(bundles[0]), "--version", "v1", "--dry-run")
    assert out.splitlines() == [
        f"would upload nothing: version v1 is already in {cli_store.description} with the same files",
        "current.json already points to v1",
        "nothing was changed (--dry-run)",
    ]
    code, out, _ = run(capsys, "publish", str(bundles[1]), "--dry-run", "--no-promote", "--version", "v2")
    assert out.splitlines()[-1] == "current.json stays at v1 (--no-promote); nothing was changed"
    code, _, err = run(capsys, "publish", str(bundles[1]), "--version", "v1", "--dry-run")
    assert code == 1 and err == (
        f"error: version v1 already exists in {cli_store.description} with different files; versions are "
        "immutable: publish under another --version\n"
    )
    assert [v.version for v in cli_store.list_versions()] == ["v1"]
    assert json.loads(cli_store.read_blob("current.json", "test")[0])["version"] == "v1"  # type: ignore[index]


def test_prune_keeps_the_version_the_index_s_vectors_came_from(
    cli_store: BlobModelStore, bundles: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """While a re-enrichment has not finished, /api/vectorize answers with the version the index was embedded with
    (reindex.json's `embedded`): prune must not take it away."""
    store = cli_store
    for index, bundle in enumerate(bundles[:4]):
        store.publish(bundle, version=f"v{index}")
    write_reindex_record(store, version="v3", mode="full", expected=None, embedded="v0")
    record = read_reindex_record(store)
    assert record is not None and (record.version, record.embedded) == ("v3", "v0")
    code, out, _ = run(capsys, "prune", "--keep", "1")
    assert code == 0, out
    assert [v.version for v in store.list_versions()] == ["v0", "v3"]
    assert "/api/vectorize uses it" in out.splitlines()[1]
