"""Where storage lives: the embedded SQLite store or an InfluxDB server (1.x or 2.x API).

:func:`storage_target` reads the settings once; :func:`detect_api` asks the server's
``/ping`` for its version header when the API generation is ``auto``; :func:`ensure_storage`
creates the 1.x database when the credentials allow (``CREATE DATABASE`` is idempotent) and
checks the 2.x bucket, else refuses with the command that creates it.
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from citysense.config import Settings
from citysense.errors import ConfigError, RetryableError
from timeseries.schema import SQLITE_FILENAME

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InfluxTarget:
    """An InfluxDB server and how to address it (credentials never logged)."""

    url: str  #: base URL without credentials
    api: Literal["auto", "1", "2"]
    database: str  #: 1.x database
    bucket: str  #: 2.x bucket
    org: str | None
    token: str | None
    username: str | None
    password: str | None
    gzip: bool
    timeout: float
    ca: str | None = None  #: CA file verifying an https:// server (None: the system's)
    _verify: list[ssl.SSLContext] = field(default_factory=list, compare=False)

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the server with (one context, built once)."""
        if self.ca is None:
            return True
        if not self._verify:
            self._verify.append(ssl.create_default_context(cafile=self.ca))
        return self._verify[0]

    def basic_auth(self) -> httpx.BasicAuth | None:
        """HTTP basic auth with the user name and password, when a user name is given."""
        return httpx.BasicAuth(self.username, self.password or "") if self.username else None

    def __repr__(self) -> str:
        return f"InfluxTarget(url={self.url!r}, api={self.api!r}, database={self.database!r})"


@dataclass(frozen=True, slots=True)
class SqliteTarget:
    path: Path


def storage_target(settings: Settings) -> InfluxTarget | SqliteTarget:
    """The configured storage: InfluxDB when ``--influx`` is set, else the embedded store."""
    if settings.influx is None:
        return SqliteTarget(Path(settings.state_dir) / SQLITE_FILENAME)
    parts = urlsplit(settings.influx)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return InfluxTarget(
        url=base,
        api=settings.influx_api,  # type: ignore[arg-type]
        database=settings.influx_db,
        bucket=settings.influx_bucket,
        org=settings.influx_org,
        token=settings.influx_token,
        username=_credential(settings.influx_username, parts.username),
        password=_credential(settings.influx_password, parts.password),
        gzip=settings.influx_gzip,
        timeout=settings.influx_timeout,
        ca=settings.influx_ca,
    )


def target_address(settings: Settings) -> str:
    """Where storage lives, for log lines (no credentials)."""
    target = storage_target(settings)
    if isinstance(target, SqliteTarget):
        return str(target.path)
    name = target.bucket if target.api == "2" else target.database
    return f"{target.url} ({name})"


async def can_write(target: InfluxTarget) -> bool:
    """Whether the target's credentials may write, found out without writing: a line that
    does not parse is refused 400 after the permission check, 401/403 before it."""
    headers = {"Authorization": f"Token {target.token}"} if target.token else {}
    auth = target.basic_auth()
    try:
        async with httpx.AsyncClient(
            timeout=target.timeout, verify=target.verify(), headers=headers, auth=auth
        ) as client:
            response = await client.post(
                f"{target.url}/write",
                params={"db": target.database if target.api == "1" else target.bucket},
                content=b"citysense-permission-probe",
            )
    except httpx.HTTPError as exc:
        raise RetryableError(f"InfluxDB at {target.url} is unreachable: {exc}") from exc
    return response.status_code not in (401, 403)


def _credential(option: str | None, userinfo: str | None) -> str | None:
    """The option when given, else the URL's (percent-decoded) userinfo part."""
    if option is not None:
        return option
    return None if userinfo is None else unquote(userinfo)


def api_of_version(version: str) -> Literal["1", "2"]:
    """``1.6.7~rc0`` -> "1"; ``v2.7.1``, ``2.7.1``, ``3.0.0`` -> "2"."""
    v = version.strip().lstrip("vV")
    return "1" if v.startswith("1.") else "2"


async def detect_api(target: InfluxTarget) -> Literal["1", "2"]:
    """The API generation to use: the configured one, or the one ``/ping`` reports."""
    if target.api != "auto":
        return target.api
    try:
        async with httpx.AsyncClient(timeout=target.timeout, verify=target.verify()) as client:
            response = await client.get(f"{target.url}/ping")
    except httpx.HTTPError as exc:
        raise RetryableError(f"InfluxDB at {target.url} is unreachable: {exc}") from exc
    version = response.headers.get("X-Influxdb-Version", "")
    if not version:
        # InfluxDB 2.x and 3.x answer /ping too; a missing header means not 1.x.
        return "2"
    return api_of_version(version)


async def ensure_storage(target: InfluxTarget, api: Literal["1", "2"]) -> None:
    """Make sure the database (1.x) or bucket (2.x) exists before anything is written.

    1.x: ``CREATE DATABASE`` (idempotent) when the credentials allow it; otherwise the
    database must exist already. 2.x: the bucket must exist (checked, never created).
    Raises :class:`ConfigError` naming the command that creates it, or :class:`RetryableError`
    when the server cannot be asked.
    """
    try:
        async with httpx.AsyncClient(base_url=target.url, timeout=target.timeout) as client:
            if api == "1":
                await _ensure_database(client, target)
            else:
                await _check_bucket(client, target)
    except httpx.HTTPError as exc:
        raise RetryableError(f"InfluxDB at {target.url} is unreachable: {exc}") from exc


async def _ensure_database(client: httpx.AsyncClient, target: InfluxTarget) -> None:
    db = target.database
    quoted = db.replace("\\", "\\\\").replace('"', '\\"')
    auth = target.basic_auth()
    created = await client.post(
        "/query", params={"q": f'CREATE DATABASE "{quoted}"'}, auth=auth or httpx.USE_CLIENT_DEFAULT
    )
    if created.status_code >= 500:
        raise RetryableError(f"InfluxDB answered {created.status_code} to CREATE DATABASE")
    if created.status_code == 200 and "error" not in created.text:
        log.info("storage: InfluxDB database %r ready (created when missing)", db)
        return
    # not allowed to create databases: the database must exist (an empty write says so)
    probe = await client.post(
        "/write",
        params={"db": db, "precision": "ms"},
        content=b"",
        auth=auth or httpx.USE_CLIENT_DEFAULT,
    )
    if probe.status_code in (200, 204):
        log.info("storage: InfluxDB database %r exists", db)
        return
    if probe.status_code >= 500:
        raise RetryableError(f"InfluxDB answered {probe.status_code} to a write")
    host, port = _host_port(target.url)
    create = (
        f"influx -host {host} -port {port} -username ADMIN -password '' "
        f"-execute 'CREATE DATABASE \"{quoted}\"'"
    )
    if probe.status_code == 404:
        who = f"user {target.username!r}" if target.username else "these credentials"
        raise ConfigError(
            f"InfluxDB database {db!r} does not exist at {target.url} and {who} may not "
            f"create it; create it with: {create}"
        )
    raise ConfigError(
        f"InfluxDB at {target.url} refused our credentials ({probe.status_code}) for "
        f"database {db!r}: {probe.text.strip()[:200]}"
    )


async def _check_bucket(client: httpx.AsyncClient, target: InfluxTarget) -> None:
    params = {"name": target.bucket}
    if target.org:
        params["org"] = target.org
    headers = {"Authorization": f"Token {target.token}"} if target.token else {}
    answer = await client.get("/api/v2/buckets", params=params, headers=headers)
    if answer.status_code >= 500:
        raise RetryableError(f"InfluxDB answered {answer.status_code} to a bucket lookup")
    if answer.status_code in (401, 403):
        raise ConfigError(
            f"InfluxDB at {target.url} refused our token ({answer.status_code}) "
            f"looking up bucket {target.bucket!r}"
        )
    buckets: list[object] = []
    if answer.status_code == 200:
        try:
            buckets = list(json.loads(answer.text).get("buckets") or [])
        except (ValueError, AttributeError):
            buckets = []
    if buckets:
        log.info("storage: InfluxDB bucket %r exists", target.bucket)
        return
    org = f" --org {target.org}" if target.org else ""
    raise ConfigError(
        f"InfluxDB bucket {target.bucket!r} does not exist at {target.url}; create it with: "
        f"influx bucket create --name {target.bucket}{org} --host {target.url}"
    )


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 8086
