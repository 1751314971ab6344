from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli import main
from tests.conftest import ROOT, SAMPLES
from tests.modelfactory import scoring_file, tiny_bundle


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
    broken = "data is not an image that can be decoded (JPEG, PNG, GIF, BMP, TIFF or WebP expected)"
    lines = [json.loads(x) for x in out.splitlines()]
    # Failed files have their line in the JSON output too, with the errors the skill would answer.
    assert [(x["file"], x.get("errors")) for x in lines] == [
        (str(tmp_path / "sub" / "broken.jpg"), [broken]),
        (str(tmp_path / "sub" / "cat.png"), None),
        (str(tmp_path / "nope.png"), ["no such file or folder"]),
    ]
    assert set(lines[1]) == {"file", "label", "confidence", "labels", "predictions", "modelVersion", "amllabel"}
    assert err.splitlines() == [
        f"error: {tmp_path / 'sub' / 'broken.jpg'}: {broken}",
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["classify", "--top-k", "0", "x.png"], "argument --top-k: must be 1 or more, got '0'"),
        (["classify", "--top-k", "x", "x.png"], "argument --top-k: expected a whole number, 1 or more, got 'x'"),
        (["classify", "--top-k", "2.5", "x.png"], "argument --top-k: expected a whole number, 1 or more, got '2.5'"),
        (["classify", "--threshold", "hi", "x.png"], "argument --threshold: expected a number from 0 to 1, got 'hi'"),
        (["classify", "--threshold", "1.5", "x.png"], "argument --threshold: must be between 0 and 1, got '1.5'"),
    ],
)
def test_usage_errors_exit_2_and_name_no_internals(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"python -m shared classify: error: {message}"
    assert "_positive_int" not in err and "_probability" not in err


def test_a_missing_path_is_an_error_before_anything_is_printed(tmp_path: Path) -> None:
    # Run as a user would, so the banner would show if it were printed first.
    completed = subprocess.run(
        [sys.executable, "-m", "shared", "classify", "nosuch/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert (completed.returncode, completed.stdout) == (1, "")
    assert completed.stderr == "error: no such file or folder: nosuch/\n"


def test_an_empty_folder_names_the_folder_and_the_suffixes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    code, out, err = run(capsys, "classify", str(tmp_path / "empty"))
    assert (code, out) == (1, "")
    assert err == (
        f"error: no image files in {tmp_path / 'empty'} (looked recursively for .bmp, .gif, .jpeg, .jpg, .png, "
        ".tif, .tiff, .webp)\n"
    )


def test_long_paths_keep_the_table_aligned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 4) / "x"
    deep.mkdir(parents=True)
    (deep / "chelsea-the-cat.png").write_bytes((SAMPLES / "chelsea.png").read_bytes())
    (tmp_path / "coffee.png").write_bytes((SAMPLES / "coffee.png").read_bytes())
    code, out, _ = run(capsys, "classify", str(tmp_path))
    assert code == 0
    header, *rows = out.splitlines()[1:]
    column = header.index("label")
    assert column == 62  # file names are cut to 60 characters
    assert len(rows) == 2
    assert all(row[column - 2 : column] == "  " and row[column] != " " for row in rows)
    assert rows[0].startswith("...") and rows[0][:60].endswith("x/chelsea-the-cat.png")


def multilabel_bundle(folder: Path) -> Path:
    bundle = tiny_bundle(folder, classes=4)
    scoring_file(bundle / "outputs" / "scoring_file_v_1_0_0.py", "image-classification-multilabel")
    return bundle


def test_the_table_honours_top_k_and_shows_every_label_above_a_multilabel_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = str(SAMPLES / "coffee.png")
    code, out, _ = run(capsys, "classify", "--top-k", "3", photo)
    rows = out.splitlines()[2:]
    assert code == 0 and len(rows) == 3 and rows[0].startswith(photo) and rows[1].startswith(" " * len(photo))
    assert rows[0].split()[1] == "espresso"
    scores = [float(r.split()[-1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # Without --top-k, one row per image for multi-class (the demo's table) ...
    code, out, _ = run(capsys, "classify", photo)
    assert len(out.splitlines()[2:]) == 1
    # ... and every label at or above the threshold for multi-label, in score order.
    model = multilabel_bundle(tmp_path / "ml")
    code, out, _ = run(capsys, "classify", "--model", str(model), "--threshold", "0", photo)
    rows = out.splitlines()[2:]
    assert code == 0 and sorted(r.split()[-2] for r in rows) == ["class_0", "class_1", "class_2", "class_3"]
    scores = [float(r.split()[-1]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_progress_never_shares_a_line_with_a_row(tmp_path: Path) -> None:
    """stdout and stderr on one terminal, as a user runs it: every row stays whole on its own line."""
    import fcntl
    import pty
    import struct
    import termios

    for i in range(40):
        (tmp_path / f"photo-{i:02d}.png").write_bytes((SAMPLES / "coffee.png").read_bytes())
    model = tiny_bundle(tmp_path / "model")
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    process = subprocess.Popen(
        [sys.executable, "-m", "shared", "classify", "--model", str(model), str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(timeout=120) == 0
    text = b"".join(chunks).decode()
    # What a terminal shows of each line: the text after its last carriage return.
    shown = [line.split("\r")[-1].rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    rows = [line for line in shown if "photo-" in line]
    assert len(rows) == 40
    assert all(line.split()[0].endswith(".png") and line.split()[1].startswith("class_") for line in rows)
    assert "classified:" in text  # the bar was drawn
    assert any(line.startswith("40 classified, 0 failed in ") for line in shown)


def test_convert_names_the_problem_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "convert", str(tmp_path / "nosuch.pt"), str(tmp_path / "out"))
    assert (code, out) == (1, "")
    assert err == (
        f"error: {tmp_path / 'nosuch.pt'} does not exist: give AutoML's model.pt or the run folder that holds it\n"
    )
    (tmp_path / "run" / "train_artifacts").mkdir(parents=True)
    code, out, err = run(capsys, "convert", str(tmp_path / "run"), str(tmp_path / "out"))
    assert (code, out) == (1, "")
    assert err == (
        f"error: no model.pt in {tmp_path / 'run'} (looked in the folder, train_artifacts/ and outputs/); download "
        "train_artifacts/model.pt from the AutoML best child run\n"
    )


def test_convert_accepts_a_run_folder_and_names_the_version_as_classify_and_publish_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from shared.bundle.loader import bundle_content_version, load_bundle
    from shared.modelstore.pointer import default_version
    from tests.checkpoints import automl_checkpoint

    run_dir = tmp_path / "run"
    (run_dir / "train_artifacts").mkdir(parents=True)
    automl_checkpoint(run_dir / "train_artifacts" / "model.pt", "mobilenetv2", ["cat", "dog"], crop=64, resize=72)
    code, out, err = run(capsys, "convert", str(run_dir), str(tmp_path / "out"))
    assert code == 0, err
    bundle = load_bundle(tmp_path / "out")
    assert out.startswith(f"converted {run_dir / 'train_artifacts' / 'model.pt'} to {tmp_path / 'out'}: multiclass")
    assert out.rstrip().endswith(f"; version {bundle.version}")
    # One name everywhere: the converted manifest's is the content name that publish defaults to.
    assert bundle.version == bundle_content_version(bundle) and bundle.version.startswith("m-")
    assert default_version(bundle, (bundle.manifest or {})["source"]) == bundle.version


LONG_NAME = "a" * 300
LONG_SHOWN = f"{'a' * 38}...{'a' * 38}"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["classify", f"{LONG_NAME}.png"],
            {},
            f"cannot use {'a' * 38}...{'a' * 34}.png: a name in it is 304 bytes long; the limit is 255 bytes per name",
        ),
        (
            ["classify", "--model", LONG_NAME, str(SAMPLES / "coffee.png")],
            {},
            f"cannot use model path {LONG_SHOWN}: a name in it is 300 bytes long; the limit is 255 bytes per name",
        ),
        (
            ["classify", str(SAMPLES / "coffee.png")],
            {"AZUREML_MODEL_DIR": LONG_NAME},
            f"AZUREML_MODEL_DIR: cannot use model path {LONG_SHOWN}: a name in it is 300 bytes long; the limit is "
            "255 bytes per name",
        ),
        (
            ["serve", "--model", LONG_NAME, "--port", "0"],
            {},
            f"cannot use model path {LONG_SHOWN}: a name in it is 300 bytes long; the limit is 255 bytes per name",
        ),
        (
            ["publish", LONG_NAME],
            {"MODEL_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true"},  # refused before the store is asked
            f"cannot use model path {LONG_SHOWN}: a name in it is 300 bytes long; the limit is 255 bytes per name",
        ),
        (
            ["convert", LONG_NAME, "out"],
            {},
            f"cannot use {LONG_SHOWN}: a name in it is 300 bytes long; the limit is 255 bytes per name",
        ),
        (
            ["convert", f"{LONG_NAME}/model.pt", "out"],
            {},
            f"cannot use {'a' * 38}...{'a' * 29}/model.pt: a name in it is 300 bytes long; the limit is 255 bytes per "
            "name",
        ),
    ],
    ids=["classify PATH", "classify --model", "AZUREML_MODEL_DIR", "serve --model", "publish", "convert", "model.pt"],
)
def test_a_path_with_a_name_over_255_bytes_is_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "")
    assert err == f"error: {message}\n"


def test_a_path_too_long_among_good_ones_is_that_files_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "classify", f"{LONG_NAME}.png", "empty", str(SAMPLES / "coffee.png"))
    assert code == 1
    assert f"{SAMPLES / 'coffee.png'}" in out and "espresso" in out
    assert err.splitlines() == [
        "warning: no image files in empty (looked recursively for .bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)",
        f"error: {'a' * 38}...{'a' * 34}.png: cannot use the path: a name in it is 304 bytes long; the limit is 255 "
        "bytes per name",
        "1 classified, 1 failed in " + err.splitlines()[-1].split(" failed in ")[1],
    ]


@pytest.mark.integration
@pytest.mark.parametrize("command", [["automl-skill"], ["python", "-m", "shared"]])
def test_the_cli_runs_from_any_folder_and_prints_its_version(tmp_path: Path, command: list[str]) -> None:
    """`make` installs the package into .venv (editable, pyproject.toml's [project.scripts]): the console
    script and `python -m shared` work outside the repository root."""
    from importlib import metadata

    from shared import __version__

    program = str(ROOT / ".venv" / "bin" / command[0])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    version = subprocess.run(
        [program, *command[1:], "--version"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.returncode == 0, version.stderr
    shown = "automl-skill" if command == ["automl-skill"] else "python -m shared"
    assert version.stdout == (
        f"{shown} {__version__} (ONNX Runtime {metadata.version('onnxruntime')}, "
        f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro})\n"
    )
    (tmp_path / "coffee.png").write_bytes((SAMPLES / "coffee.png").read_bytes())
    done = subprocess.run(
        [program, *command[1:], "classify", "coffee.png"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "espresso" in done.stdout


def test_version_names_the_product_and_onnx_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("python -m shared 0.") and "(ONNX Runtime 1." in out


AZURITE_ACCOUNT_KEY = (  # the emulator's fixed, published development account key: not a secret
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _closed_loopback_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_commands_in_one_folder_read_local_settings_alike_and_a_stopped_azurite_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.skill import service as app

    port = _closed_loopback_port()
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    local = tmp_path / "local.settings.json"
    monkeypatch.setattr("shared.core.settings.LOCAL_SETTINGS", local)
    monkeypatch.delenv("MODEL_BLOB_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("MODEL_BLOB_ACCOUNT_URL", raising=False)
    hint = (
        "; that is Azurite on this machine: start it with `make azurite`, or remove MODEL_BLOB_CONNECTION_STRING "
        "(from the environment or local.settings.json) to serve the bundled model"
    )
    code, out, err = run(capsys, "versions")
    assert (code, out) == (1, "")
    assert err.startswith("error: no model store is configured")

    local.write_text(json.dumps({"IsEncrypted": False, "Values": {"MODEL_BLOB_CONNECTION_STRING": connection}}))
    code, out, err = run(capsys, "versions")
    assert (code, out) == (1, "")
    assert err.startswith(f"error: model store http://127.0.0.1:{port}/devstoreaccount1/models is unreachable while ")
    assert err.endswith(hint + "\n") and err.count("\n") == 1

    class Stopped:
        server_address = ("127.0.0.1", 7071)

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    monkeypatch.delenv("MODEL_BLOB_CONNECTION_STRING")  # set by the versions run above, as func start would
    monkeypatch.setattr("shared.cli.devserver.make_server", lambda settings, host, port: Stopped())
    try:
        code, _, err = run(capsys, "serve")
        assert code == 0
        assert err.startswith("warning: no model is loaded yet: model store http://127.0.0.1:")
        assert hint in err.splitlines()[0]
        assert "settings from local.settings.json (1 value); serving http://127.0.0.1:" in err
        health = app.service().holder.status()
        assert health["store"] == "unreachable" and health["lastError"].endswith(hint)
    finally:
        app.reset_service(None)
