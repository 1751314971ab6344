from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.modelstore import prefetch


@pytest.fixture(autouse=True)
def fresh_process() -> Iterator[None]:
    """Each test starts as a new process would: no prefetch started, none pending (one per process)."""
    prefetch._pending, prefetch._started = None, False
    yield
    if prefetch._pending is not None:
        prefetch._pending.done.wait(timeout=30)
    prefetch._pending, prefetch._started = None, False
