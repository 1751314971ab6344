"""Timer: keep the best model of the AML labeling project published, then re-enrich the search index when the
current version changed (thin adapters over shared.refresh.policy and shared.search.reindex). Each step is guarded: a
failure of one never stops the other."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.refresh import policy as refresh
from shared.search import reindex

logger = logging.getLogger(__name__)


def main(timer: func.TimerRequest) -> None:
    try:
        refresh.run_scheduled(past_due=timer.past_due)
    except Exception as exc:  # noqa: BLE001 - a bug in one step must not stop the other
        logger.error("refresh failed unexpectedly: %s", exc.__class__.__name__)
    try:
        reindex.run_scheduled()
    except Exception as exc:  # noqa: BLE001
        logger.error("reindex failed unexpectedly: %s", exc.__class__.__name__)
