"""The shell commands a docs page shows, and a runner that runs them as written against the suite's stand-ins.

A command is a line of a fenced shell block (```bash, ```sh, ```shell or ```console), with its
`\\` continuations and any quoted newline joined in, and without comments; or an inline code span that starts
with a program (`az ...`, `make bench`, `.venv/bin/python -m shared ...`). A ```python block is one command
too (its text whole), so a code example cannot appear unnoticed either.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}  # a bare ``` holds layouts and output, not commands
# The first word of an inline code span that makes it a command rather than a name or a fragment.
PROGRAMS = {
    "az", "azd", "func", "docker", "make", "curl", "python", "python3", ".venv/bin/python", "cp", "zip",
    "pip", "npm", "npx", "git", "scripts/bench.py", "export",
}  # fmt: skip
# Programs that need real Azure or a tool the test environment cannot run: every command of theirs is skipped by name.
NEEDS_AZURE = {
    "az": "the Azure CLI acts on a subscription; nothing here stands in for Azure Resource Manager",
    "azd": "the Azure Developer CLI provisions and deploys to a subscription",
    "func": "Azure Functions Core Tools cannot be installed here (its installer downloads a binary from a "
    "host the test environment cannot reach); the dev server calls the same entry points",
    "docker": "no Docker engine in the test environment",
}


@dataclass(frozen=True)
class Command:
    """One documented command: `text` as a shell runs it, `key` its whitespace collapsed (for tables)."""

    text: str
    inline: bool
    language: str = "bash"

    @property
    def key(self) -> str:
        return " ".join(self.text.split())

    @property
    def head(self) -> str:
        """The first line (a ```python block is listed by it)."""
        return self.text.splitlines()[0].strip()

    @property
    def program(self) -> str:
        """The program that does the work: the first word after `export` and `NAME=value` assignments, or
        the one a `$(...)` value runs (`APP=$(az ...)` is az's)."""
        if self.language == "python":
            return "python"
        words = self.key.split()
        if words and words[0] == "export":
            words = words[1:]
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            value = words[0].split("=", 1)[1].lstrip('"')
            if value.startswith("$("):
                return value[2:]
            words = words[1:]
        return words[0] if words else ""


def _shell_lines(block: str) -> Iterator[str]:
    """Whole commands of one shell block: comment lines dropped, trailing comments cut, `\\` continuations
    and newlines inside quotes kept as they are (bash reads them so)."""
    pending = ""
    for raw in block.splitlines():
        if pending and _open_quote(pending):
            text = pending + raw  # inside a quoted string every character is the string's
        else:
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                continue
            text = pending + re.sub(r"\s+#\s.*$", "", stripped)
        if text.endswith("\\") or _open_quote(text):
            pending = text + "\n"
            continue
        pending = ""
        yield text.strip()
    assert not pending, f"unfinished command in a shell block: {pending!r}"


def _open_quote(text: str) -> bool:
    if not text:
        return False
    try:
        shlex.split(text.replace("\\\n", " "))
    except ValueError:
        return True
    return False


FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", flags=re.DOTALL | re.MULTILINE)


def page_commands(path: Path) -> list[Command]:
    """Every command of the page, fenced ones first in page order, then inline ones not already fenced."""
    text = path.read_text(encoding="utf-8")
    fenced: list[Command] = []
    for language, indented in re.findall(FENCE, text):
        block = textwrap.dedent(indented)  # a fence may be indented inside a list item
        if language in SHELL_LANGUAGES:
            fenced.extend(Command(line, inline=False) for line in _shell_lines(block))
        elif language == "python":
            fenced.append(Command(block.strip(), inline=False, language="python"))
    prose = FENCE.sub("", text)
    seen = {command.key for command in fenced}
    inline: list[Command] = []
    for span in re.findall(r"`([^`]+)`", prose):
        command = Command(" ".join(span.split()), inline=True)
        if command.key.split()[0] in PROGRAMS and command.key not in seen:
            seen.add(command.key)
            inline.append(command)
    return fenced + inline


def fenced_commands(page: str) -> list[str]:
    """The commands of the page's ```bash blocks (what tests/docs/test_docs_model_commands.py runs)."""
    return [command.text for command in page_commands(ROOT / "docs" / page) if not command.inline]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def base_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without Azure, model store, search or key settings, the proxy off for
    loopback, and a cache of the test's own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODEL_", "AZURE", "AZUREML_", "SEARCH_", "SKILL_", "REINDEX_"))
        and "proxy" not in k.lower()
    }
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["MODEL_CACHE_DIR"] = str(tmp_path / "cache")
    return env


@dataclass
class Ran:
    command: Command
    written: str
    stdout: str
    stderr: str


@dataclass
class PageRun:
    """Runs a page's commands in order from the repository root (or `cwd`), as bash would.

    `places` replaces placeholders (`path/to/run`, `<search>`) with what the test made; `substitute` maps a
    command's key to the command run instead (each with a reason in the test's SUBSTITUTED table); `skipped`
    maps keys to reasons; `before` runs a step before the command with that key. A `serve` command (a server
    that runs until stopped) is started in the background on a free port, which replaces 7071 in the commands
    after it, and stopped at the end.
    """

    page: str
    env: dict[str, str]
    places: dict[str, str] = field(default_factory=dict)
    substitute: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    before: dict[str, Callable[[], None]] = field(default_factory=dict)
    cwd: Path = ROOT
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def commands(self) -> list[Command]:
        return page_commands(ROOT / "docs" / self.page)

    def is_skipped(self, command: Command) -> bool:
        return command.program in NEEDS_AZURE or command.key in self.skipped or command.head in self.skipped

    def run(self) -> list[Ran]:
        ran: list[Ran] = []
        try:
            for command in self.commands():
                if self.is_skipped(command):
                    continue
                if command.key in self.before:
                    self.before[command.key]()
                written = self.substitute.get(command.key, command.text)
                for placeholder, real in self.places.items():
                    written = written.replace(placeholder, real)
                assert "path/to" not in written and not re.search(r"<[a-z][a-z -]*>", written), (
                    f"no stand-in for a placeholder of {command.key!r} ({self.page})"
                )
                if re.search(r"-m shared serve\b", written):
                    ran.append(Ran(command, written, self.serve(written)[1], ""))
                    continue
                done = subprocess.run(
                    ["bash", "-c", written], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                    timeout=300, check=False,
                )  # fmt: skip
                assert done.returncode == 0, f"{command.key!r} ({self.page}) failed:\n{done.stderr}"
                assert "Traceback" not in done.stderr and "error:" not in done.stderr, done.stderr
                ran.append(Ran(command, written, done.stdout, done.stderr))
        finally:
            self.stop()
        return ran

    def serve(self, written: str) -> tuple[str, str]:
        """Start `written` (a `serve` command) on a free port; returns its URL and its first 200 health body."""
        port = free_port()
        self.places["localhost:7071"] = f"localhost:{port}"
        self.places["127.0.0.1:7071"] = f"127.0.0.1:{port}"
        server = subprocess.Popen(
            ["bash", "-c", f"{written.removesuffix('&').strip()} --port {port}"],
            cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.servers.append(server)
        for _ in range(1200):  # up to 120 s for the imports and the model; a wait, not a timing assertion
            assert server.poll() is None, (
                f"{written!r} exited: {server.stderr.read().decode() if server.stderr else ''}"
            )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as answer:
                    if answer.status == 200:
                        return f"http://127.0.0.1:{port}", answer.read().decode()
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{written!r} did not answer /api/health with 200")

    def stop(self) -> None:
        for server in self.servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            if server.stderr:
                server.stderr.close()
        self.servers.clear()
