"""The house rules that keep gpumod easy to see and to change, checked on the source.

- front ends (cli/, mcp/, tui/, gateway/) hold no logic: they import gpumod.ops, gpumod.errors
  and their own helpers, nothing else of gpumod (lazy imports inside functions too);
- the store owns its SQL: no module outside store/ passes SQL to SQLite;
- no import circle among gpumod's modules (module-level imports, and lazy ones too);
- no module over about 500 lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "gpumod"
FRONT_ENDS = ("cli", "mcp", "tui", "gateway")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """The gpumod modules an import statement loads (`from pkg import submodule` names it)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.add(sub if sub in MODULES else source)
    return out


def imports(module: str, *, lazy: bool, path: Path | None = None) -> set[str]:
    """gpumod modules imported by MODULE: at module level only, or anywhere (lazy=True).
    Imports under `if TYPE_CHECKING:` are never run and do not count."""
    path = path or MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for stmt in statements:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                found.update(_imported(stmt, module, path.name == "__init__.py"))
            elif isinstance(stmt, ast.If):
                if not _is_type_checking(stmt.test):
                    visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)
                for handler in stmt.handlers:
                    visit(handler.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)
            elif lazy and isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef |
                                     ast.ClassDef | ast.With | ast.For | ast.While):
                visit(stmt.body)
                visit(getattr(stmt, "orelse", []))
    visit(tree.body)
    return {m for m in found if m == "gpumod" or m.startswith("gpumod.")}


def _allowed_for(front_end: str, target: str) -> bool:
    # `gpumod mcp`, `gpumod tui` and `gpumod gateway run` are CLI commands that start the
    # other front ends.
    own = (front_end, "mcp", "tui", "gateway") if front_end == "cli" else (front_end,)
    return (target == "gpumod"                       # the package itself: __version__
            or target == "gpumod.errors"
            or target == "gpumod.ops" or target.startswith("gpumod.ops.")
            or any(target == f"gpumod.{o}" or target.startswith(f"gpumod.{o}.") for o in own))


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_front_ends_import_only_ops_errors_and_their_own_helpers(front_end: str) -> None:
    wrong = sorted(f"{module} imports {target}"
                   for module in MODULES if module.startswith(f"gpumod.{front_end}")
                   for target in imports(module, lazy=True)
                   if not _allowed_for(front_end, target))
    assert not wrong, "front ends call gpumod.ops; move this logic there:\n" + "\n".join(wrong)


def test_the_import_rule_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function, a relative one and a
    TYPE_CHECKING-only one are told apart (a checker that sees nothing cannot fail)."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from gpumod.store.db import Store\n"
              "def f():\n    from gpumod.planner import picture\n"
              "    from . import common\n")
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    assert imports("gpumod.cli.probe", lazy=True, path=path) == {
        "gpumod.planner.picture", "gpumod.cli.common"}
    assert imports("gpumod.cli.probe", lazy=False, path=path) == set()
    assert not _allowed_for("cli", "gpumod.planner.picture")
    assert _allowed_for("cli", "gpumod.ops.api") and _allowed_for("cli", "gpumod.cli.common")


# SQL statements: the keyword that starts a statement, then what must follow it.
_SQL = re.compile(r"^\s*(SELECT\b.*\bFROM\b|INSERT\s+INTO\b|UPDATE\s+\w+\s+SET\b|"
                  r"DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX)\b|ALTER\s+TABLE\b|DROP\s+TABLE\b|"
                  r"REPLACE\s+INTO\b|PRAGMA\b)", re.DOTALL)  # gpumod writes SQL in capitals


def sql_strings(path: Path) -> list[tuple[int, str]]:
    """String constants (f-strings and implicitly joined ones included) that are SQL."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
             for v in node.values}
    out = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in parts:
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values
                           if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if text and _SQL.match(text):
            out.append((node.lineno, " ".join(text.split())[:60]))
    return out


def test_no_module_outside_the_store_holds_sql() -> None:
    found = [f"{path.relative_to(SRC)}:{line}: {text}"
             for path in sorted(PACKAGE.rglob("*.py"))
             if "store" not in path.relative_to(PACKAGE).parts[:1]
             for line, text in sql_strings(path)]
    assert not found, "SQL belongs in gpumod/store/ (typed queries):\n" + "\n".join(found)


def test_the_sql_rule_sees_sql(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('q = ("SELECT name FROM services "\n     "WHERE host = ?")\n'
                     'u = f"UPDATE services SET {x} = ?"\n'
                     'text = "select a model from the list"\n', encoding="utf-8")
    assert [line for line, _ in sql_strings(probe)] == [1, 3]
    assert sql_strings(PACKAGE / "store" / "db.py"), "the store's own SQL is seen"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_among_modules() -> None:
    graph = {m: {t for t in imports(m, lazy=False) if t in MODULES and t != m}
             for m in MODULES}
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_no_import_circle_through_lazy_imports_either() -> None:
    """Imports inside functions (kept lazy for speed) must not hide a circle: two
    modules that need each other are one concept split in two, or a layer climbing up."""
    graph = {m: {t for t in imports(m, lazy=True) if t in MODULES and t != m}
             for m in MODULES}
    assert not _cycles(graph), f"import circles through lazy imports: {_cycles(graph)}"


def test_the_circle_check_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_500_lines() -> None:
    long = sorted(f"{path.relative_to(PACKAGE)}: {n} lines"
                  for path in PACKAGE.rglob("*.py")
                  if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert not long, "split these along their seams:\n" + "\n".join(long)
