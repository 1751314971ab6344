"""POST /api/classify: the Azure AI Search custom Web API skill. A thin adapter over shared.app."""

from __future__ import annotations

import azure.functions as func

from shared import app


def main(req: func.HttpRequest) -> func.HttpResponse:
    status, body, headers = app.classify(req.get_body(), req.params)
    return func.HttpResponse(body, status_code=status, headers=headers, mimetype="application/json")
