"""POST /api/vectorize: the search index's Custom Web API vectorizer. A thin adapter over shared.skill.service."""

from __future__ import annotations

import azure.functions as func

from shared.modelstore import prefetch

# As in ClassifySkill: with the Blob model store, the model's download starts when the worker loads the function.
prefetch.start()

from shared.skill import service  # noqa: E402


def main(req: func.HttpRequest) -> func.HttpResponse:
    status, body, headers = service.vectorize(req.get_body())
    return func.HttpResponse(body, status_code=status, headers=headers, mimetype="application/json")
