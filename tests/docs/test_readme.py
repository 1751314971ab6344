"""The README's tour, run as written from the repository root (the front page's promise)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # see tests/conftest.py


def tour() -> list[str]:
    """The lines of the README's first ```bash block after "A five-minute tour", without comments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## A five-minute tour") :]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_tour_is_what_this_test_runs() -> None:
    assert tour() == [
        "make demo",
        ".venv/bin/python -m shared classify --json samples/coffee.png",
        ".venv/bin/python -m shared serve &",
        "curl -s localhost:7071/api/health",
    ]


def test_the_tours_classify_line_answers_as_the_skill_does() -> None:
    line = tour()[1]
    done = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    (answer,) = [json.loads(row) for row in done.stdout.splitlines()]
    assert answer["file"] == "samples/coffee.png"
    assert answer["label"] == answer["amllabel"] == "espresso"
    assert set(answer) >= {"label", "confidence", "labels", "predictions", "modelVersion", "amllabel"}


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_tours_server_answers_health_on_7071() -> None:
    if not _port_free(7071):
        pytest.skip("port 7071 is in use (func start?); tests/cli/test_devserver.py covers serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_BLOB_", "SKILL_API_KEY"))}
    server = subprocess.Popen(
        ["bash", "-c", tour()[2].removesuffix("&").strip()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        for _ in range(600):  # up to 60 s for the server to import and bind; not a timing assertion
            if server.poll() is not None:
                break
            if not _port_free(7071):
                break
            time.sleep(0.1)
        curl = subprocess.run(
            ["bash", "-c", tour()[3]], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        health = json.loads(curl.stdout)
        assert health["status"] == "ready"
        assert health["model"]["version"] == "sample-efficientnet-lite0-imagenet"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
