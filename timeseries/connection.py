"""Where storage lives: the embedded SQLite store or an InfluxDB server (1.x or 2.x API).

:func:`storage_target` reads the settings once; :func:`detect_api` asks the server's
``/ping`` for its version header when the API generation is ``auto``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from citysense.config import Settings
from citysense.errors import RetryableError
from timeseries.schema import SQLITE_FILENAME


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


async def can_write(target: InfluxTarget) -> bool:
    """Whether the target's credentials may write, found out without writing: a line that
    does not parse is refused 400 after the permission check, 401/403 before it."""
    headers = {"Authorization": f"Token {target.token}"} if target.token else {}
    auth = httpx.BasicAuth(target.username, target.password or "") if target.username else None
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
