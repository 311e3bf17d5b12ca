"""``pip install citysense[edge]`` into a fresh environment: the gateway runs, nothing it never
uses is installed, and a service of another extra says which extra to install (exit 2).

Wheels come from build/wheels when the .deb test left them there, else from the index."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from citysense.cli import EXTRA_MODULES, EXTRA_OF
from citysense.config import COMMANDS, load_settings
from tests.deploy.test_deb import WHEELS, build_wheel
from tests.servers import ROOT


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_the_edge_extra_alone_runs_the_gateway(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    WHEELS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--find-links", str(WHEELS), f"{wheel}[edge]"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    installed = subprocess.run(
        [py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    names = {line.split("==")[0] for line in installed.split()}
    assert {"paho-mqtt", "aiocoap", "pyserial", "cbor2", "citysense"} <= names
    for heavy in ("numpy", "fastapi", "uvicorn", "influxdb-client", "httpx", "orjson"):
        assert heavy not in names, f"{heavy} came with citysense[edge]"
    print(f"citysense[edge] environment: {du(venv) / 2**20:.1f} MiB")

    citysense = str(venv / "bin" / "citysense")
    help_ = subprocess.run([citysense, "edge", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--coap" in help_.stdout, help_.stderr
    for command, extra in (("api", "api"), ("ingest", "ingest"), ("demo", "all")):
        result = subprocess.run(
            [citysense, command], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert f"pip install 'citysense[{extra}]'" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_every_service_command_has_an_extra_and_the_extras_match_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for command in COMMANDS:
        assert EXTRA_OF[command] in extras, command
    assert set(EXTRA_MODULES) <= set(extras)
    dist_of = {
        "paho": "paho-mqtt",
        "serial": "pyserial",
        "influxdb_client": "influxdb-client",
    }
    for extra, modules in EXTRA_MODULES.items():
        if extra == "all":
            continue
        wanted = {r.split(">")[0].split("=")[0].split("[")[0] for r in extras[extra]}
        assert {dist_of.get(m, m) for m in modules} == wanted, extra


@pytest.mark.parametrize("service", ["edge", "ingest", "api"])
def test_the_example_configurations_load(service: str) -> None:
    path = ROOT / "deploy" / "etc" / f"{service}.toml"
    settings = load_settings(service, {"config": str(path)}, environ={})
    assert settings.config == str(path)


def test_the_base_package_imports_nothing_heavy() -> None:
    heavy = sorted({m for mods in EXTRA_MODULES.values() for m in mods})
    code = (
        "import sys\n"
        "from citysense.cli import build_parser\n"
        "from citysense import config, health, logs, migrate, registry, sdnotify, senml\n"
        "build_parser().parse_args(['edge', '--gateway', 'gw-1'])\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
