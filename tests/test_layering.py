"""The package layering of ARCHITECTURE.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = (
    "citysense",
    "firmware_bridge",
    "edge",
    "ingest",
    "timeseries",
    "analytics",
    "dashboard_api",
    "alerts",
    "simulators",
    "mqtt_broker",
    "provision",
)

#: package -> project packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "citysense": set(),
    "firmware_bridge": {"citysense"},
    "edge": {"citysense", "firmware_bridge"},
    "ingest": {"citysense", "timeseries"},
    "timeseries": {"citysense"},
    "analytics": {"citysense"},
    "dashboard_api": {"citysense", "timeseries", "analytics"},
    "alerts": {"citysense", "timeseries", "analytics"},
    "simulators": {"citysense"},
    "mqtt_broker": {"citysense"},
    "provision": {"citysense"},
}
#: The composition root may import every service.
COMPOSITION_ROOT = "citysense/cli"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def test_every_package_imports_only_what_it_may() -> None:
    violations: list[str] = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(COMPOSITION_ROOT):
                continue
            for name in imports_of(path) & set(PROJECT):
                if name != package and name not in allowed:
                    violations.append(f"{rel} imports {name}")
    assert not violations, "forbidden imports:\n" + "\n".join(violations)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import edge.outbox\nfrom ingest import pipeline\n")
    assert imports_of(bad) == {"edge", "ingest"}


def test_every_package_has_a_docstring() -> None:
    for package in PROJECT:
        init = ROOT / package / "__init__.py"
        assert init.is_file(), f"{package} has no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{package} has no docstring"
