from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli import main
from tests.conftest import ROOT, SAMPLES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_names_the_photos_contents_sensibly(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "classify", str(SAMPLES))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("model sample-efficientnet-lite0-imagenet (multiclass, 1000 labels) from ")
    assert lines[1].split() == ["file", "label", "confidence"]
    rows = {Path(line.split()[0]).name: line for line in lines[2:]}
    assert set(rows) == {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"}
    assert any(cat in rows["chelsea.png"] for cat in ("tabby", "tiger cat", "Egyptian cat"))
    assert any(cup in rows["coffee.png"] for cup in ("espresso", "cup", "coffee mug"))


def test_json_lines_carry_the_skill_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "classify", "--json", "--top-k", "3", str(SAMPLES / "coffee.png"))
    assert code == 0
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert set(line) == {"file", "label", "confidence", "labels", "predictions", "modelVersion", "amllabel"}
    assert line["label"] == "espresso" == line["amllabel"] and line["labels"] == ["espresso"]
    assert line["predictions"][0]["label"] == "espresso" and len(line["predictions"]) == 3
    assert line["modelVersion"] == "sample-efficientnet-lite0-imagenet"


def test_threshold_above_the_top_score_gives_no_label_and_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "classify", "--json", "--threshold", "0.99", str(SAMPLES / "chelsea.png"))
    line = json.loads(out)
    assert code == 0 and line["label"] is None and line["labels"] == []
    assert line["warnings"][0].startswith("low confidence: no label scored at or above the threshold 0.99 (best: ")


def test_a_bad_file_gets_one_line_and_the_rest_are_classified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.jpg").write_text("a text file with an image suffix")
    (tmp_path / "sub" / "cat.png").write_bytes((SAMPLES / "chelsea.png").read_bytes())
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    code, out, err = run(capsys, "classify", "--json", str(tmp_path), str(tmp_path / "nope.png"))
    assert code == 1
    assert [json.loads(x)["file"] for x in out.splitlines()] == [str(tmp_path / "sub" / "cat.png")]
    assert err.splitlines() == [
        f"error: {tmp_path / 'sub' / 'broken.jpg'}: data is not an image that can be decoded "
        "(JPEG, PNG, GIF, BMP, TIFF or WebP expected)",
        f"error: {tmp_path / 'nope.png'}: no such file or folder",
        "1 classified, 2 failed in " + err.splitlines()[-1].split(" in ")[-1],
    ]


def test_a_bad_model_is_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text("[")
    (tmp_path / "model.onnx").write_bytes(b"")
    completed = subprocess.run(
        [sys.executable, "-m", "shared", "classify", "--model", str(tmp_path), "samples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 1 and completed.stdout == ""
    assert (
        completed.stderr == f"error: {tmp_path / 'labels.json'} is not valid JSON (line 1, column 2: Expecting value)\n"
    )


def test_bad_settings_name_the_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ENGINE_THREADS", "many")
    code, _, err = run(capsys, "classify", str(SAMPLES))
    assert code == 1
    assert err == "error: setting ENGINE_THREADS='many' is invalid: expected an integer from 0 (automatic) to 256\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["classify", "--top-k", "0", "x.png"])
    assert caught.value.code == 2
    assert "--top-k: must be 1 or more" in capsys.readouterr().err
