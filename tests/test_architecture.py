"""The import rules of docs/architecture.md: the contracts in pyproject.toml hold, and no module of shared/ or of
the function folders takes part in an import cycle (lazy and type-checking imports count too)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import grimp
import pytest

from tests.conftest import ROOT

PACKAGES = ("shared", "ClassifySkill", "ExtractionSkill", "Health", "RefreshModel", "VectorizeImage")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def import_cycles(packages: Iterable[str]) -> list[list[str]]:
    """Every set of modules that import each other in a loop (Tarjan's strongly connected components), each
    sorted, largest first; empty when the import graph is acyclic."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        # Iterative Tarjan: a deep import chain must not hit Python's recursion limit.
        work = [(module, iter(sorted(graph.find_modules_directly_imported_by(module))))]
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.find_modules_directly_imported_by(node):
                    cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(cycles, key=lambda c: (-len(c), c))


def test_no_import_cycles() -> None:
    assert import_cycles(PACKAGES) == []


def test_the_cycle_finder_finds_a_new_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic.c import g\n")  # a lazy import counts
    (package / "c.py").write_text(
        textwrap.dedent(
            """\
            from typing import TYPE_CHECKING

            if TYPE_CHECKING:
                from cyclic.a import X
            """
        )
    )
    (package / "d.py").write_text("import cyclic.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(["cyclic"]) == [["cyclic.a", "cyclic.b", "cyclic.c"]]


def test_the_import_contracts_hold() -> None:
    """The layers and forbidden imports of pyproject.toml ([tool.importlinter]), as `lint-imports` checks them."""
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_broken_contract_fails_the_check(tmp_path: Path) -> None:
    """The same command fails, naming the import, when a rule does not hold (here one written to fail: the
    skill does import the model store)."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [tool.importlinter]
            root_packages = ["shared"]

            [[tool.importlinter.contracts]]
            name = "a rule the code breaks"
            type = "forbidden"
            source_modules = ["shared.skill"]
            forbidden_modules = ["shared.modelstore"]
            """
        )
    )
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "shared.skill is not allowed to import shared.modelstore" in done.stdout
