"""The skill service: what it logs, how it survives its own failures, and what it imports."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.inference.images import DecodeBudget
from shared.skill import service as app
from tests.conftest import ROOT, SAMPLES, encode

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


def test_the_http_path_never_imports_torch_or_an_aml_client() -> None:
    script = (
        "import json, sys, azure.functions as func\n"
        "import ClassifySkill, Health\n"
        "import base64\n"
        "body = json.dumps({'values': [{'recordId': '1', 'data': {'image': "
        "base64.b64encode(open('samples/coffee.png','rb').read()).decode()}}]}).encode()\n"
        "r = ClassifySkill.main(func.HttpRequest(method='POST', url='/api/classify', body=body))\n"
        "h = Health.main(func.HttpRequest(method='GET', url='/api/health', body=b''))\n"
        "label = json.loads(r.get_body())['values'][0]['data']['label']\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'azureml', "
        "'mlflow') or m.startswith('azure.ai.ml'))\n"
        "print(json.dumps({'status': r.status_code, 'health': h.status_code, 'label': label, 'heavy': heavy}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "health": 200, "label": "espresso", "heavy": []}


def png(image: Image.Image) -> str:
    return base64.b64encode(encode(image, "PNG")).decode()


def test_hostile_images_next_to_good_photos_get_their_own_answers(install_service: Any) -> None:
    install_service()
    truncated = encode(Image.open(SAMPLES / "chelsea.png").convert("RGB"), "JPEG")
    records = {
        "coffee": B64_COFFEE,
        "cat": base64.b64encode(encode(Image.open(SAMPLES / "chelsea.png").convert("RGB"), "JPEG")).decode(),
        "thin": png(Image.new("L", (16, 200_000), 128)),  # 10 kB; resized whole it would be 3.3 GB
        "thinner": png(Image.new("L", (16, 3_000_000), 128)),  # 48 Mpx, under the 50 Mpx limit
        "bomb": png(Image.new("RGBA", (7000, 7000), (10, 20, 30, 40))),  # 190 kB, about 392 MB decoded
        "icon": base64.b64encode(encode(Image.new("RGBA", (32, 32)), "ICO")).decode(),
        "truncated": base64.b64encode(truncated[: len(truncated) // 2]).decode(),
    }
    body = {"values": [{"recordId": rid, "data": {"image": data}} for rid, data in records.items()]}
    status, raw, _ = app.classify(json.dumps(body).encode(), {})
    assert status == 200
    answers = {v["recordId"]: v for v in json.loads(raw)["values"]}
    assert answers["coffee"]["data"]["label"] == "espresso"
    assert answers["cat"]["data"]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    for rid in ("thin", "thinner", "bomb"):
        assert answers[rid]["errors"] is None and answers[rid]["data"]["modelVersion"], rid
    assert answers["icon"]["errors"] == [
        {"message": "image format ICO is not accepted; send JPEG, PNG, GIF, BMP, TIFF or WebP"}
    ]
    assert answers["truncated"]["errors"] == [{"message": "image data is truncated or corrupt (OSError)"}]


def test_memory_error_while_preparing_one_image_is_that_records_error(
    install_service: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.inference import classification

    install_service()
    real = classification.preprocess

    def preprocess(image: Image.Image, *args: Any, **kwargs: Any) -> Any:
        if image.size == (500, 400):
            raise MemoryError
        return real(image, *args, **kwargs)

    monkeypatch.setattr(classification, "preprocess", preprocess)
    big = base64.b64encode(encode(Image.open(SAMPLES / "coffee.png").convert("RGB").resize((500, 400)), "PNG"))
    body = {
        "values": [
            {"recordId": "1", "data": {"image": B64_COFFEE}},
            {"recordId": "2", "data": {"image": big.decode()}},
        ]
    }
    status, raw, _ = app.classify(json.dumps(body).encode(), {})
    first, second = json.loads(raw)["values"]
    assert status == 200 and first["data"]["label"] == "espresso"
    assert second["data"] == {}
    message = second["errors"][0]["message"]
    assert message.startswith("image could not be prepared (MemoryError, incident ")
    assert message.endswith("); the other records were answered")
    assert "MemoryError" in caplog.text


class RecordingBudget(DecodeBudget):
    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self.threads: set[str] = set()
        self.holders = 0
        self.most_holders = 0

    @contextmanager
    def hold(self, nbytes: int, deadline: float | None = None, *, budget_s: float = 0.0) -> Iterator[None]:
        with super().hold(nbytes, deadline, budget_s=budget_s):
            self.threads.add(threading.current_thread().name)
            self.holders += 1
            self.most_holders = max(self.most_holders, self.holders)
            try:
                yield
            finally:
                self.holders -= 1


def test_concurrent_bombs_share_one_bounded_decode_budget(install_service: Any) -> None:
    # Four one-record requests at once, each a 2500x2500 RGBA PNG costing about 52 MB to decode and prepare.
    # With a 64 MiB budget they decode one at a time, in the decode pool, never in the request threads.
    service = install_service(decode_memory_mb=64, decode_threads=2)
    assert service.budget.capacity_bytes == 64 << 20
    service.budget = RecordingBudget(64 << 20)
    body = json.dumps({"values": [{"recordId": "1", "data": {"image": png(Image.new("RGBA", (2500, 2500)))}}]})
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="request") as callers:
        results = list(callers.map(lambda _: app.classify(body.encode(), {}), range(4)))
    assert [status for status, _, _ in results] == [200] * 4
    assert all(json.loads(raw)["values"][0]["errors"] is None for _, raw, _ in results)
    budget = service.budget
    assert 2500 * 2500 * 8 <= budget.peak_bytes <= 64 << 20
    assert budget.most_holders == 1 and budget.in_flight == 0
    assert budget.threads and all(name.startswith("decode") for name in budget.threads)


def test_nested_json_is_a_400_not_a_500(install_service: Any) -> None:
    install_service()
    status, raw, _ = app.classify(b'{"values": ' + b"[" * 100_000, {})
    assert status == 400
    assert json.loads(raw)["error"]["message"].startswith("request body nests JSON arrays or objects too deeply")
