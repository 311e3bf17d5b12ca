"""Real servers for the tests: Mosquitto and influxd on free loopback ports.

Each server runs from a temporary folder, is started and stopped by PID, and is waited for
by polling its real protocol -- never by sleeping a fixed time. Both come from Debian
packages (``mosquitto``, ``influxdb``); :func:`ensure_binary` installs a missing one with
apt-get, or fails loudly: tests never skip for want of a server.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROKER_CONF = ROOT / "deploy" / "mosquitto.conf"

_PACKAGES = {
    "mosquitto": "mosquitto",
    "influxd": "influxdb",
    "coap-client-notls": "libcoap3-bin",
    "coap-client-openssl": "libcoap3-bin",
    "coap-client-gnutls": "libcoap3-bin",
    "chromium": "chromium",
}


def ensure_binary(name: str) -> str:
    """Path of ``name``; installs its Debian package when missing, else raises."""
    for candidate in (name, f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        path = shutil.which(candidate)
        if path:
            return path
    package = _PACKAGES.get(name, name)
    cmd = ["apt-get", "install", "-y", "-q", package]
    if os.geteuid() != 0:
        cmd.insert(0, "sudo")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for candidate in (name, f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        path = shutil.which(candidate)
        if path:
            return path
    raise RuntimeError(
        f"{name} is missing and '{' '.join(cmd)}' did not install it:\n{result.stderr[-2000:]}"
    )


#: Ports the tests pick come from below the kernel's ephemeral range (32768-60999 here), so
#: that no client socket of any process can take one between the pick and the bind.
_PICK_RANGE = (20000, 32000)
_picked: set[int] = set()
_rng = random.Random()


def _pick(kind: int) -> int:
    for _ in range(1000):
        port = _rng.randrange(*_PICK_RANGE)
        if port in _picked:
            continue
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))
            if kind == socket.SOCK_STREAM:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _picked.add(port)
        return port
    raise RuntimeError(f"no free port in {_PICK_RANGE}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1, outside the ephemeral range, not handed out before."""
    return _pick(socket.SOCK_STREAM)


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1, outside the ephemeral range, not handed out before."""
    return _pick(socket.SOCK_DGRAM)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is true; raise naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM a process the test started, and its exit code (SIGKILL if it does not exit)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class _Process:
    """A server subprocess owned by the tests, stopped by its PID."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 -- owned by the process lifetime
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            return self.ready()

        wait_until(up, timeout, f"{self.name} to accept connections")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """``kill -9``: no chance to save anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class MosquittoServer(_Process):
    """Mosquitto with the project's broker settings (deploy/mosquitto.conf)."""

    name = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.binary = ensure_binary("mosquitto")
        self.conf = workdir / "mosquitto.conf"
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        # the shipped listener and persistence folder, replaced by the test's own
        shipped = [
            line
            for line in BROKER_CONF.read_text().splitlines()
            if not line.startswith(("listener ", "persistence_location "))
        ]
        self.conf.write_text(
            "\n".join(shipped)
            + f"\nuser root\nlistener {self.port} 127.0.0.1\n"
            + f"persistence_location {data}/\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def ready(self) -> bool:
        # A bare MQTT 3.1.1 CONNECT answered by CONNACK 0 proves the broker is serving.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                client_id = b"citysense-probe"
                var = b"\x00\x04MQTT\x04\x02\x00\x05"
                payload = len(client_id).to_bytes(2, "big") + client_id
                s.sendall(bytes([0x10, len(var) + len(payload)]) + var + payload)
                return s.recv(4)[:2] == b"\x20\x02"
        except OSError:
            return False


class InfluxServer(_Process):
    """influxd 1.x with every listener moved to free loopback ports."""

    name = "influxd"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        db: str = "citysense",
        *,
        admin: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(workdir)
        #: ``(user, password)``: run with ``auth-enabled = true``; the tests query as admin
        self.admin = admin
        self.port = port or free_port()
        self.rpc_port = free_port()
        self.db = db
        self.binary = ensure_binary("influxd")
        self.conf = workdir / "influxdb.conf"
        self.conf.write_text(self._config())

    def _config(self) -> str:
        base = subprocess.run(
            [self.binary, "config"], capture_output=True, text=True, check=True
        ).stdout
        out: list[str] = []
        section = ""
        for line in base.splitlines():
            stripped = line.strip()
            if stripped.startswith("["):
                section = stripped.strip("[]")
            key = stripped.split("=")[0].strip()
            if section == "" and key == "bind-address":
                line = f'bind-address = "127.0.0.1:{self.rpc_port}"'
            elif section == "" and key == "reporting-disabled":
                line = "reporting-disabled = true"
            elif section == "meta" and key == "dir":
                line = f'  dir = "{self.workdir / "meta"}"'
            elif section == "data" and key == "dir":
                line = f'  dir = "{self.workdir / "data"}"'
            elif section == "data" and key == "wal-dir":
                line = f'  wal-dir = "{self.workdir / "wal"}"'
            elif section == "data" and key == "query-log-enabled":
                line = "  query-log-enabled = false"
            elif section == "http" and key == "bind-address":
                line = f'  bind-address = "127.0.0.1:{self.port}"'
            elif section == "http" and key == "auth-enabled":
                line = f"  auth-enabled = {'true' if self.admin else 'false'}"
            elif section == "http" and key == "log-enabled":
                line = "  log-enabled = false"
            elif section == "monitor" and key == "store-enabled":
                line = "  store-enabled = false"
            elif section == "continuous_queries" and key == "enabled":
                line = "  enabled = false"
            elif section in ("graphite", "collectd", "opentsdb", "udp") and key == "enabled":
                line = "  enabled = false"
            out.append(line)
        return "\n".join(out) + "\n"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-config", str(self.conf)]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                return bool(r.status == 204)
        except (OSError, urllib.error.URLError):
            return False

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)
        if self.admin is not None:
            # with auth on and no user yet, influxd accepts only the first admin's creation
            user, password = self.admin
            q = f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
            data = urllib.parse.urlencode({"q": q}).encode()
            req = urllib.request.Request(f"{self.url}/query", data=data, method="POST")
            with (
                contextlib.suppress(urllib.error.HTTPError),
                urllib.request.urlopen(req, timeout=30),
            ):
                pass
        self.query(f'CREATE DATABASE "{self.db}"', method="POST")

    def _authorize(self, req: urllib.request.Request) -> urllib.request.Request:
        if self.admin is not None:
            import base64

            token = base64.b64encode(f"{self.admin[0]}:{self.admin[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        return req

    def query(self, q: str, db: str | None = None, method: str = "GET") -> dict:  # type: ignore[type-arg]
        """Run InfluxQL directly (the tests' own independent reader)."""
        import json

        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        data = urllib.parse.urlencode(params)
        if method == "POST":
            req = urllib.request.Request(f"{self.url}/query", data=data.encode(), method="POST")
        else:
            req = urllib.request.Request(f"{self.url}/query?{data}")
        with urllib.request.urlopen(self._authorize(req), timeout=30) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def write(self, lines: str, db: str | None = None, precision: str = "ms") -> None:
        """Write line protocol directly with ``/write``."""
        params = urllib.parse.urlencode({"db": db or self.db, "precision": precision})
        req = urllib.request.Request(
            f"{self.url}/write?{params}", data=lines.encode(), method="POST"
        )
        with urllib.request.urlopen(self._authorize(req), timeout=30) as r:
            assert r.status == 204, r.status

    def rows(self, q: str) -> list[list[object]]:
        """All value rows of the first series of ``q`` (empty when there is none)."""
        result = self.query(q, db=self.db)["results"][0]
        if "error" in result:
            raise RuntimeError(result["error"])
        out: list[list[object]] = []
        for series in result.get("series", []):
            out.extend(series["values"])
        return out


@contextlib.contextmanager
def running(server: _Process):  # type: ignore[no-untyped-def]
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ProvisionedMosquitto(_Process):
    """Mosquitto serving a configuration written by ``citysense deploy broker``."""

    name = "mosquitto-provisioned"

    def __init__(self, folder: Path, port: int) -> None:
        super().__init__(folder / "run")
        self.folder = folder
        self.port = port  #: user name and password over TLS
        self.cert_port = port + 1  #: client certificate over TLS
        self.binary = ensure_binary("mosquitto")
        conf = (folder / "mosquitto.conf").read_text()
        # the tests run as root: Mosquitto would otherwise drop to the 'mosquitto' user,
        # which cannot read the 0700 folder
        self.conf = folder / "run" / "mosquitto.conf"
        self.conf.write_text(conf + "\nuser root\n")

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def ready(self) -> bool:
        import ssl

        context = ssl.create_default_context(cafile=str(self.folder / "ca.crt"))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True
        except OSError:
            return False


def free_port_pair() -> int:
    """A TCP port ``p`` free on 127.0.0.1 with ``p + 1`` free too (a provisioned broker)."""
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        _picked.add(port + 1)
        return port
    raise RuntimeError("no free pair of ports")
