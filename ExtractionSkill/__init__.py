"""POST /api/extraction: the older AutoML Vision Classifier PowerSkill's route, answered exactly like
/api/classify (same service, same authLevel), so a migrated skillset only changes its host and key header."""

from __future__ import annotations

import azure.functions as func

from shared.skill import service


def main(req: func.HttpRequest) -> func.HttpResponse:
    status, body, headers = service.classify(req.get_body(), req.params)
    return func.HttpResponse(body, status_code=status, headers=headers, mimetype="application/json")
