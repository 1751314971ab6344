"""The skill service: what it logs, how it survives its own failures, and what it imports."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from shared import app
from tests.conftest import ROOT, SAMPLES

B64_COFFEE = base64.b64encode((SAMPLES / "coffee.png").read_bytes()).decode()


def test_one_summary_line_per_batch_and_no_payload_or_key_in_logs(
    install_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    install_service(api_key="secret-key-123")
    body = {
        "values": [
            {"recordId": "1", "data": {"image": B64_COFFEE}},
            {"recordId": "2", "data": {"image": "bm90IGFuIGltYWdl"}},
        ]
    }
    with caplog.at_level(logging.DEBUG):
        status, _, _ = app.classify(json.dumps(body).encode(), {"code": "secret-key-123"})
    assert status == 200
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("classified ")]
    assert len(summaries) == 1
    assert summaries[0].startswith("classified records=2 errors=1 warnings=0 model=sample-efficientnet-lite0-imagenet ")
    text = caplog.text
    assert B64_COFFEE[:40] not in text and "bm90IGFuIGltYWdl" not in text and "secret-key-123" not in text


def test_a_model_that_fails_at_inference_answers_every_record_and_keeps_serving(
    install_service: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = install_service()
    engine = service.holder.current()
    real = engine.scores

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("ORT exploded")

    monkeypatch.setattr(engine, "scores", broken)
    body = json.dumps({"values": [{"recordId": "1", "data": {"image": B64_COFFEE}}]}).encode()
    status, raw, _ = app.classify(body, {})
    (answer,) = json.loads(raw)["values"]
    assert status == 200 and answer["data"] == {}
    message = answer["errors"][0]["message"]
    assert message.startswith("internal error while classifying this image (incident ")
    assert "ORT exploded" not in message and "Traceback" not in message
    assert "ORT exploded" in caplog.text  # the traceback goes to the log only
    monkeypatch.setattr(engine, "scores", real)
    status, raw, _ = app.classify(body, {})
    assert json.loads(raw)["values"][0]["data"]["label"] == "espresso"


def test_the_http_path_never_imports_torch_or_azureml() -> None:
    script = (
        "import json, sys, azure.functions as func\n"
        "import ClassifySkill, Health\n"
        "import base64\n"
        "body = json.dumps({'values': [{'recordId': '1', 'data': {'image': "
        "base64.b64encode(open('samples/coffee.png','rb').read()).decode()}}]}).encode()\n"
        "r = ClassifySkill.main(func.HttpRequest(method='POST', url='/api/classify', body=body))\n"
        "h = Health.main(func.HttpRequest(method='GET', url='/api/health', body=b''))\n"
        "label = json.loads(r.get_body())['values'][0]['data']['label']\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'azureml'))\n"
        "print(json.dumps({'status': r.status_code, 'health': h.status_code, 'label': label, 'heavy': heavy}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "health": 200, "label": "espresso", "heavy": []}
