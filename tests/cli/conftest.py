from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """Each test leaves the process's environment as it found it: the command line reads local.settings.json
    into os.environ (as `func start` does), which monkeypatch does not undo for names that were absent."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
