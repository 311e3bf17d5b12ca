"""The dashboard page in real headless Chromium, driven over the DevTools protocol.

The browser speaks CDP over ``--remote-debugging-pipe`` (NUL-separated JSON on fds 3 and 4),
so no websocket library is needed. The test loads the page from the API serving the known
city, waits until the page says it has loaded, checks that every chart and table has
content and that the console saw no error, and saves a screenshot under tests/artifacts/.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard_api.conftest import VIEWER_KEY, MakeApi

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")


class Browser:
    """Headless Chromium with a CDP pipe; one page session."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="citysense-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def remap() -> None:  # runs in the child: the pipe must sit on fds 3 and 4
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}",
                "--window-size=1440,1100",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=remap,
            pass_fds=(3, 4),  # open here: os.pipe() took the lowest free numbers
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def open_page(self) -> None:
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression}")
            self.call(
                "Runtime.evaluate",
                expression="new Promise(r => setTimeout(r, 100))",
                awaitPromise=True,
            )

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(params["entry"].get("text", "")[:500])
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


def test_dashboard_loads_with_data_and_no_console_errors(make_api: MakeApi) -> None:
    api = make_api("sqlite", api_keys=())
    browser = Browser()
    try:
        browser.open_page()
        browser.call("Page.navigate", url=api.url + "/")
        browser.wait_for("document.body && document.body.dataset.loaded === '1'", timeout=60)
        counts = browser.evaluate(
            """({
              mapDistricts: document.querySelectorAll('#map g.district').length,
              aqiRows: document.querySelectorAll('#aqi-table tbody tr').length,
              aqiBadges: [...document.querySelectorAll('#aqi-table .badge')].map(b => b.textContent),
              chartLines: document.querySelectorAll('#chart path.series').length,
              chartPathLength: Math.max(0, ...[...document.querySelectorAll('#chart path.series')].map(p => p.getAttribute('d').length)),
              metricOptions: document.querySelectorAll('#metric option').length,
              congestionBars: document.querySelectorAll('#congestion rect.bar').length,
              siteRows: document.querySelectorAll('#sites-table tbody tr').length,
              leakRows: [...document.querySelectorAll('#leak-table tbody tr td:first-child')].map(t => t.textContent),
              deviceStatus: [...document.querySelectorAll('#device-table tbody tr td:first-child')].map(t => t.textContent),
              errors: [...document.querySelectorAll('.error')].map(e => e.textContent),
              status: document.getElementById('status').textContent,
            })"""
        )
        assert counts["mapDistricts"] == 2
        assert counts["aqiRows"] == 2 and all(b.isdigit() for b in counts["aqiBadges"])
        assert counts["chartLines"] == 2 and counts["chartPathLength"] > 100
        assert counts["metricOptions"] > 10
        assert counts["congestionBars"] == 2 and counts["siteRows"] == 2
        assert sorted(counts["leakRows"]) == ["wm-j1", "wm-j2"]
        statuses = counts["deviceStatus"]
        assert len(statuses) == 9 and statuses[:1] == ["offline"]  # aq-new: never seen
        assert statuses == sorted(statuses, key=["offline", "stale", "online"].index)
        assert counts["errors"] == [] and counts["status"].startswith("updated")
        # choosing a metric and a district redraws the chart, grouped by site
        browser.evaluate(
            "(() => { const s = document.getElementById('district'); s.value = 'jinshui';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        browser.wait_for(
            "[...document.querySelectorAll('#legend span')].some(s => s.textContent === 's2')", 30
        )
        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        png = base64.b64decode(shot["data"])
        (ARTIFACTS / "dashboard.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        assert browser.errors() == []
    finally:
        browser.close()


def test_dashboard_asks_for_a_key_when_keys_are_configured(make_api: MakeApi) -> None:
    api = make_api("sqlite")
    browser = Browser()
    try:
        browser.open_page()
        browser.call("Page.navigate", url=api.url + "/")
        browser.wait_for(
            "document.getElementById('keyform') && !document.getElementById('keyform').hidden"
            " && document.getElementById('status').textContent.startsWith('cannot reach')",
            60,
        )
        assert "Bearer" in browser.evaluate("document.getElementById('status').textContent")
    finally:
        browser.close()


def test_dashboard_with_a_viewer_key_shows_the_city_but_not_devices(make_api: MakeApi) -> None:
    api = make_api("sqlite")
    browser = Browser()
    try:
        browser.open_page()
        browser.call("Page.navigate", url=api.url + "/static/style.css")  # same origin
        browser.wait_for("document.readyState === 'complete'", 30)
        browser.evaluate(f"sessionStorage.setItem('citysense-key', '{VIEWER_KEY}')")  # the tab's
        browser.call("Page.navigate", url=api.url + "/")
        browser.wait_for("document.body && document.body.dataset.loaded === '1'", timeout=60)
        seen = browser.evaluate(
            """({
              aqiRows: document.querySelectorAll('#aqi-table tbody tr').length,
              chartLines: document.querySelectorAll('#chart path.series').length,
              deviceRows: document.querySelectorAll('#device-table tbody tr').length,
              deviceNote: (document.querySelector('#device-card .error') || {}).textContent,
              keyFormHidden: document.getElementById('keyform').hidden,
            })"""
        )
        assert seen == {
            "aqiRows": 2,
            "chartLines": 2,
            "deviceRows": 0,
            "deviceNote": "needs an operator key",
            "keyFormHidden": True,
        }
        # the key is held for the tab only, never in storage that outlives it
        assert browser.evaluate("localStorage.getItem('citysense-key')") is None
    finally:
        browser.close()
