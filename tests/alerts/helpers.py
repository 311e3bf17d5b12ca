"""Test parts for ``citysense alerts``: a webhook receiver run by the test, the service as a
process of the test's own, and readings written to the embedded store."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from citysense.model import Reading
from tests.servers import free_port, wait_until
from timeseries.connection import SQLITE_FILENAME
from timeseries.schema import reading_to_points
from timeseries.sqlite_store import SqliteWriter

SECRET = b"webhook-secret-for-tests-0123456789"


class Receiver:
    """A webhook receiver: verifies the HMAC, records every request, answers ``status``
    (after ``delay`` seconds); ``stop()`` takes it off the network, ``start()`` brings it back
    on the same port."""

    def __init__(self, secret: bytes = SECRET, port: int | None = None) -> None:
        self.secret = secret
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.status = 200
        self.delay = 0.0
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                expected = "sha256=" + hmac.new(outer.secret, body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(
                    expected, self.headers.get("X-Citysense-Signature", "")
                )
                if outer.delay:
                    time.sleep(outer.delay)
                status = outer.status
                with outer.lock:
                    if not signed:
                        outer.bad_signatures += 1
                    outer.requests.append(
                        {
                            "body": json.loads(body),
                            "signed": signed,
                            "status": status,
                            "path": self.path,
                            "event_id": self.headers.get("X-Citysense-Event-Id"),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[dict[str, Any]]:
        """Bodies answered 2xx (what the receiver took), in order, repeats included."""
        with self.lock:
            return [r["body"] for r in self.requests if 200 <= r["status"] < 300]

    def unique(self) -> dict[str, dict[str, Any]]:
        """Accepted events after dropping repeats by ``event_id``."""
        out: dict[str, dict[str, Any]] = {}
        for body in self.accepted():
            out.setdefault(body["event_id"], body)
        return out

    def events(self, event: str | None = None, rule: str | None = None) -> list[dict[str, Any]]:
        return [
            b
            for b in self.unique().values()
            if (event is None or b["event"] == event)
            and (rule is None or b["alarm"]["rule"] == rule)
        ]


def write_readings(state_dir: Path, readings: list[Reading], gateway: str = "gw-t") -> None:
    writer = SqliteWriter(state_dir / SQLITE_FILENAME)
    try:
        writer.write_blocking([p for r in readings for p in reading_to_points(r, gateway)])
    finally:
        import asyncio

        asyncio.run(writer.close())


def reading(
    device: str, district: str, t: int, kind: str = "air_station", **values: float
) -> Reading:
    return Reading(device, kind, district, f"{district}-s1", t, dict(values))


def alerts_args(
    rules: Path, state: Path, *webhooks: str, secret: Path | None = None, **options: object
) -> list[str]:
    """Command-line options of ``citysense alerts``: rules, state, a 0.3 s interval unless
    ``interval=`` says otherwise, each webhook, the secret file, then ``name=value`` options."""
    out = ["--rules", str(rules), "--state-dir", str(state)]
    options.setdefault("interval", "0.3")
    for hook in webhooks:
        out += ["--webhook", hook]
    if secret is not None:
        out += ["--webhook-secret-file", str(secret)]
    for name, value in options.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return out


class AlertsProcess:
    """``citysense alerts`` as a process of the test's own."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / "alerts.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AlertsProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "citysense",
                    "alerts",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
            )
        wait_until(self._ready, 60, f"alerts to start\n{self.log_tail()}", interval=0.1)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"alerts exited at start:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.base}/api/v1/health", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def get(self, path: str, key: str | None = None) -> Any:
        req = urllib.request.Request(self.base + path)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def get_text(self, path: str, key: str | None = None) -> str:
        req = urllib.request.Request(self.base + path)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.read().decode())

    def post(self, path: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
