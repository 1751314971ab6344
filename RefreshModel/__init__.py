"""Timer: keep the best model of the AML labeling project published (a thin adapter over shared.refresh)."""

from __future__ import annotations

import azure.functions as func

from shared import refresh


def main(timer: func.TimerRequest) -> None:
    refresh.run_scheduled(past_due=timer.past_due)
