from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.core.errors import SettingsError
from shared.core.settings import Settings, setting_names
from tests.conftest import ROOT


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.deadline_s, s.max_request_bytes, s.max_records, s.default_top_k) == (200.0, 100 * 1024 * 1024, 1000, 5)
    assert s.model_dir is None and s.api_key is None and s.fast_jpeg_decode is True


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "AZUREML_MODEL_DIR": "/models/x",
            "ENGINE_THREADS": "2",
            "DECODE_THREADS": "1",
            "FAST_JPEG_DECODE": "false",
            "SKILL_DEADLINE_SECONDS": "120.5",
            "SKILL_API_KEY": "key-value-xyz",
        }
    )
    assert (s.model_dir, s.model_threads, s.decode_threads, s.fast_jpeg_decode) == (Path("/models/x"), 2, 1, False)
    assert s.deadline_s == 120.5 and s.api_key == "key-value-xyz"
    assert "key-value-xyz" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SKILL_DEADLINE_SECONDS": "300"},
            "setting SKILL_DEADLINE_SECONDS='300' is invalid: expected seconds from 1 to 230",
        ),
        ({"FAST_JPEG_DECODE": "maybe"}, "setting FAST_JPEG_DECODE='maybe' is invalid: expected true or false"),
        ({"SKILL_MAX_RECORDS": "0"}, "setting SKILL_MAX_RECORDS='0' is invalid: expected an integer from 1 to 100000"),
        (
            {"SKILL_MIN_IMAGE_SIDE": "-1"},
            "setting SKILL_MIN_IMAGE_SIDE='-1' is invalid: expected pixels from 1 to 4096",
        ),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


def test_every_setting_is_in_the_sample_and_the_readme() -> None:
    names = setting_names()
    assert len(names) >= 12
    sample = json.loads((ROOT / "local.settings.json.sample").read_text())["Values"]
    readme = (ROOT / "docs" / "settings.md").read_text()
    from shared.core.settings import LEGACY_ALIASES

    assert names - set(sample) - set(LEGACY_ALIASES) == set()
    assert {n for n in names if f"| `{n}` |" not in readme} == set()


# -- re-enrichment (shared/reindex.py) ----------------------------------------------------------------------


def test_reindex_defaults_follow_the_endpoint_and_the_poll_period() -> None:
    off = Settings.from_env({"MODEL_POLL_SECONDS": "30"})
    assert (off.search_endpoint, off.reindex_mode, off.reindex_delay_s) == (None, "off", 120.0)
    on = Settings.from_env({"SEARCH_ENDPOINT": "https://srch.search.windows.net/", "SEARCH_ADMIN_KEY": "admin-key-x"})
    assert on.search_endpoint == "https://srch.search.windows.net"
    assert (on.reindex_mode, on.reindex_delay_s) == ("full", 180.0)
    assert (on.search_indexer_name, on.search_skillset_name, on.search_skill_name, on.search_index_name) == (
        "automl-images-indexer",
        "automl-images-skillset",
        "classify-images",
        "automl-images-index",
    )
    assert "admin-key-x" not in repr(on)
    local = Settings.from_env({"SEARCH_ENDPOINT": "http://127.0.0.1:8080", "REINDEX_MODE": "Skills"})
    assert (local.search_endpoint, local.reindex_mode) == ("http://127.0.0.1:8080", "skills")


ENDPOINT_EXPECTED = (
    "expected the search service's URL, https://<service>.search.windows.net (plain http only to a loopback address)"
)
SEARCH_NAME_EXPECTED = (
    "expected lowercase letters, digits and dashes (1-128, starting and ending with a letter or digit)"
)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SEARCH_ENDPOINT": "http://srch.search.windows.net"},
            f"setting SEARCH_ENDPOINT='http://srch.search.windows.net' is invalid: {ENDPOINT_EXPECTED}",
        ),
        (
            {"SEARCH_ENDPOINT": "https://srch.search.windows.net/indexes?x=1"},
            f"setting SEARCH_ENDPOINT='https://srch.search.windows.net/indexes?x=1' is invalid: {ENDPOINT_EXPECTED}",
        ),
        (
            {"REINDEX_MODE": "skills"},
            "setting REINDEX_MODE=skills needs SEARCH_ENDPOINT: set it to the search service's URL, or set "
            "REINDEX_MODE=off",
        ),
        (
            {"SEARCH_ENDPOINT": "https://s.search.windows.net", "REINDEX_MODE": "partial"},
            "setting REINDEX_MODE='partial' is invalid: expected off, full or skills",
        ),
        (
            {"REINDEX_DELAY_SECONDS": "-1"},
            "setting REINDEX_DELAY_SECONDS='-1' is invalid: expected seconds from 0 to 604800",
        ),
        (
            {"SEARCH_INDEXER_NAME": "My_Indexer"},
            f"setting SEARCH_INDEXER_NAME='My_Indexer' is invalid: {SEARCH_NAME_EXPECTED}",
        ),
        (
            {"SEARCH_SKILL_NAME": "x" * 129},
            f"setting SEARCH_SKILL_NAME='{'x' * 129}' is invalid: expected a skill name of 1-128 printable characters",
        ),
    ],
)
def test_bad_reindex_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message
