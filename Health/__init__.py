"""GET (and HEAD, for uptime probes) /api/health: model version and readiness (503 until a model is loaded)."""

from __future__ import annotations

import azure.functions as func

from shared.skill import service


def main(req: func.HttpRequest) -> func.HttpResponse:
    status, body, headers = service.health()
    return func.HttpResponse(body, status_code=status, headers=headers, mimetype="application/json")
