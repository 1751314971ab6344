"""POST /api/classify: the Azure AI Search custom Web API skill. A thin adapter over shared.skill.service."""

from __future__ import annotations

import azure.functions as func

from shared.modelstore import prefetch

# The worker imports this module when it loads the function, before any request: with the Blob model store,
# the model's download starts here and runs while shared.skill.service imports ONNX Runtime
# (shared/modelstore/prefetch.py).
prefetch.start()

from shared.skill import service  # noqa: E402


def main(req: func.HttpRequest) -> func.HttpResponse:
    status, body, headers = service.classify(req.get_body(), req.params)
    return func.HttpResponse(body, status_code=status, headers=headers, mimetype="application/json")
