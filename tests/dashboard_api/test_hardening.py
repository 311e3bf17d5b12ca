"""The API's edges (INTERFACES §10.3): bounded metrics, failed-auth limiting, security headers,
anonymous health, HEAD, the access log, the keys file with SIGHUP, the bind rule."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from citysense.apikeys import load_keys_file
from citysense.cli import main
from citysense.config import Settings
from citysense.errors import ConfigError
from dashboard_api.app import create_app
from dashboard_api.auth import FAILED_AUTH_PER_MINUTE
from tests.dashboard_api.conftest import OPERATOR_KEY, VIEWER_KEY, ApiServer, MakeApi
from tests.servers import ROOT, free_port, wait_until

CSP = "default-src 'self'; frame-ancestors 'none'"


def exposition(api: ApiServer) -> str:
    """/metrics as served (read in-process: the flood's address may be limited)."""
    return str(api.app.state.metrics.exposition())


def test_metrics_stay_bounded_whatever_is_sent(make_api: MakeApi) -> None:
    api = make_api()
    with api.client(None) as anonymous:

        def hostile(i: int) -> None:
            anonymous.request(f"X{i}Y", f"/api/v1/x{i}/latest")
            anonymous.request("GET", f"/api/v1/y{i}/series")
            anonymous.request("GET", f"/nothing/{i}?q={i}")
            anonymous.request(f"M{i}", f"/{i}")

        # every kind of answer first (401s, then 429s once the address is limited), so that
        # what follows can add no label set of its own
        for i in range(FAILED_AUTH_PER_MINUTE + 2):
            hostile(10_000 + i)
        lines_before = set(exposition(api).splitlines())
        before = len(exposition(api))
        for i in range(300):
            hostile(i)
        text = exposition(api)
        after = len(text)
    labels = {line.rsplit(" ", 1)[0] for line in text.splitlines()}
    assert labels == {line.rsplit(" ", 1)[0] for line in lines_before}
    assert abs(after - before) <= 1024, (before, after)
    assert "X1Y" not in text and "/nothing/1" not in text and 'method="OTHER"' in text


def test_failed_authentication_is_limited_per_address(make_api: MakeApi) -> None:
    api = make_api()
    statuses: list[int] = []
    with api.client("wrong-key-000000000") as wrong, api.client() as ok:
        for _ in range(FAILED_AUTH_PER_MINUTE + 5):
            statuses.append(wrong.get("/api/v1/catalog").status_code)
        limited = wrong.get("/api/v1/catalog")
        assert statuses[:FAILED_AUTH_PER_MINUTE] == [401] * FAILED_AUTH_PER_MINUTE
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        # the limit is for the failing address: even a good key from it waits
        assert ok.get("/api/v1/catalog").status_code == 429
        assert api.app.state.metrics.auth_limited == 7  # the 5 extra, then these two


def test_security_headers_on_page_json_errors_and_static(make_api: MakeApi) -> None:
    api = make_api()
    with api.client() as client, api.client(None) as anonymous:
        for response in (
            anonymous.get("/"),
            client.get("/api/v1/catalog"),
            anonymous.get("/api/v1/catalog"),  # 401
            client.get("/no/such/page"),  # 404
            anonymous.get("/static/app.js"),
        ):
            assert response.headers["content-security-policy"] == CSP, response.url
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["x-frame-options"] == "DENY"


def test_health_tells_anonymous_callers_the_status_only(make_api: MakeApi) -> None:
    api = make_api()
    with api.client(None) as anonymous, api.client(VIEWER_KEY) as viewer:
        r = anonymous.get("/api/v1/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = anonymous.get("/api/v1/health", headers={"Authorization": "Bearer wrong-key-0000"})
        assert r.json() == {"status": "ok"}
        assert api.app.state.metrics.auth_failed == 1  # counted: no oracle for guessing keys
        full = viewer.get("/api/v1/health").json()
        assert full["status"] == "ok" and "storage" in full and "version" in full


def test_every_get_route_answers_head(make_api: MakeApi) -> None:
    api = make_api()
    paths = [
        "/",
        "/static/app.js",
        "/api/v1/health",
        "/api/v1/catalog",
        "/api/v1/openapi.json",
        "/api/v1/devices",
        "/api/v1/environment/latest",
        "/metrics",
    ]
    with api.client() as client:
        for path in paths:
            get = client.get(path)
            head = client.head(path)
            assert head.status_code == get.status_code, path
            assert head.content == b"", path


def test_access_log_names_the_key_id_never_the_key(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api = make_api()
    with caplog.at_level(logging.INFO, logger="dashboard_api.access"):
        with api.client() as client, api.client("wrong-key-000000000") as wrong:
            client.get("/api/v1/catalog")
            wrong.get("/api/v1/catalog")
            client.get("/api/v1/environment/latest")
        wait_until(lambda: len(caplog.records) >= 3, 10, "three access lines")
    lines = [r.getMessage() for r in caplog.records if r.name == "dashboard_api.access"]
    text = "\n".join(lines)
    assert OPERATOR_KEY not in text and "wrong-key" not in text
    assert any(line.startswith("GET /api/v1/catalog 200 key=") for line in lines)
    assert any(line.startswith("GET /api/v1/catalog 401 key=-") for line in lines)
    assert any(line.startswith("GET /api/v1/{domain}/latest 200 key=") for line in lines)


def test_non_loopback_bind_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="--insecure-open"):
        create_app(Settings(bind="0.0.0.0:8000"))
    create_app(Settings(bind="0.0.0.0:8000", insecure_open=True))
    create_app(Settings(bind="0.0.0.0:8000", api_keys=(f"{OPERATOR_KEY}:operator",)))
    create_app(Settings(bind="127.0.0.1:8000"))
    assert main(["api", "--bind", "0.0.0.0:1"]) == 2


def test_keys_add_prints_once_and_stores_only_the_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.toml"
    assert main(["api", "keys", "add", "--role", "operator", "--file", str(keys)]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["api", "keys", "add", "--file", str(keys), "--name", "wall"]) == 0
    second = capsys.readouterr().out.strip()
    assert len(first) >= 43 and first != second  # 32 bytes, URL-safe base64
    text = keys.read_text()
    assert first not in text and second not in text
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    stored = load_keys_file(str(keys))
    assert [k.role for k in stored] == ["operator", "viewer"] and stored[1].name == "wall"
    assert main(["api", "keys", "add", "--file", str(keys), "--name", "wall"]) == 2


def test_keys_file_and_sighup_reload(tmp_path: Path) -> None:
    """``citysense api`` as a process: a key added to its file works after SIGHUP."""
    keys = tmp_path / "keys.toml"
    env = dict(os.environ, CITYSENSE_API_KEYS_FILE=str(keys))
    cli = [sys.executable, "-m", "citysense"]

    def add(name: str) -> str:
        out = subprocess.run(
            [*cli, "api", "keys", "add", "--file", str(keys), "--name", name],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    first = add("first")
    port = free_port()
    proc = subprocess.Popen(
        [*cli, "api", "--bind", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "s")],
        env=env,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1/catalog"

        def status(key: str) -> int:
            try:
                return httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code
            except httpx.HTTPError:
                return 0

        wait_until(lambda: status(first) == 200, 30, "the API with the first key")
        second = add("second")
        assert status(second) == 401
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: status(second) == 200, 10, "the second key after SIGHUP")
        assert status(first) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert first.encode() not in err and b"API keys reloaded: 2 keys" in err


def test_a_secret_on_the_command_line_is_warned_about_never_logged(tmp_path: Path) -> None:
    secret = "s3cr3t-on-argv-value"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "citysense",
            "api",
            "--api-keys",
            f"{secret}:operator",
            "--api-keys-file",  # missing: the API refuses to start after the warnings
            str(tmp_path / "no-such-keys.toml"),
            "--influx",
            f"http://reader:{secret}x@127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert "--api-keys was given on the command line" in result.stderr
    assert "--influx was given on the command line" in result.stderr
    assert result.returncode == 2 and "no-such-keys.toml" in result.stderr
    assert secret not in result.stderr and secret not in result.stdout
