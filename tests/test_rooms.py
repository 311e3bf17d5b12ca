"""Room sizes: no module of the services over 500 lines, no function over 60 lines.

What is still over either limit is listed in :data:`ALLOWED` with its size today as a
ceiling and the reason. An entry may not grow, and an entry that no longer needs its place
must be removed: the list only shrinks.
"""

from __future__ import annotations

import ast

from tests.test_layering import PROJECT, ROOT

#: the service packages: those of the layering table
PACKAGES = PROJECT
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60

#: "path" (a module's lines) or "path::Qual.name" (a function's lines) -> ceiling in lines.
ALLOWED: dict[str, int] = {
    # A data table would go here (a function that is one literal); there is none today.
    # aiocoap's OscoreSiteWrapper.render_to_pipe, kept line for line comparable with it:
    "edge/compat/oscore.py::OscoreSite.render_to_pipe": 66,
    # the ingestor's hot loop, one function on purpose (see the comment on it):
    "timeseries/lineprotocol.py::LineFastPath._lines": 96,
}


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int]]:
    """(qualified name, lines) of every function, methods and nested functions included."""
    out: list[tuple[str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            assert node.end_lineno is not None
            out.append((name, node.end_lineno - node.lineno + 1))
            out += _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            out += _functions(node, prefix + node.name + ".")
        else:
            out += _functions(node, prefix)
    return out


def sizes() -> dict[str, int]:
    """Every module and function over its limit, with its size."""
    over: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            lines = len(text.splitlines())
            if lines > MAX_FILE_LINES:
                over[rel] = lines
            for name, length in _functions(ast.parse(text, rel)):
                if length > MAX_FUNCTION_LINES:
                    over[f"{rel}::{name}"] = length
    return over


def test_no_room_over_its_limit_unless_listed() -> None:
    over = sizes()
    new = {k: v for k, v in over.items() if k not in ALLOWED}
    assert not new, (
        f"over {MAX_FILE_LINES} lines (module) or {MAX_FUNCTION_LINES} (function): {new}"
    )
    grown = {k: (v, ALLOWED[k]) for k, v in over.items() if k in ALLOWED and v > ALLOWED[k]}
    assert not grown, f"listed rooms grew (now, ceiling): {grown}"


def test_allow_list_only_shrinks() -> None:
    over = sizes()
    stale = sorted(k for k in ALLOWED if k not in over)
    assert not stale, f"within the limits now: remove from ALLOWED: {stale}"


def test_the_walk_sees_functions_and_methods() -> None:
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n")
    assert _functions(tree) == [("A.f", 3), ("A.f.g", 2)]
