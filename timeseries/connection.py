"""Where storage lives: the embedded SQLite store or an InfluxDB server (1.x or 2.x API).

:func:`storage_target` reads the settings once; :func:`detect_api` asks the server's
``/ping`` for its version header when the API generation is ``auto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

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
        username=parts.username,
        password=parts.password,
        gzip=settings.influx_gzip,
        timeout=settings.influx_timeout,
    )


def target_address(settings: Settings) -> str:
    """Where storage lives, for log lines (no credentials)."""
    target = storage_target(settings)
    if isinstance(target, SqliteTarget):
        return str(target.path)
    name = target.database if target.api == "1" else f"{target.database}/{target.bucket}"
    return f"{target.url} ({name})"


def api_of_version(version: str) -> Literal["1", "2"]:
    """``1.6.7~rc0`` -> "1"; ``v2.7.1``, ``2.7.1``, ``3.0.0`` -> "2"."""
    v = version.strip().lstrip("vV")
    return "1" if v.startswith("1.") else "2"


async def detect_api(target: InfluxTarget) -> Literal["1", "2"]:
    """The API generation to use: the configured one, or the one ``/ping`` reports."""
    if target.api != "auto":
        return target.api
    try:
        async with httpx.AsyncClient(timeout=target.timeout) as client:
            response = await client.get(f"{target.url}/ping")
    except httpx.HTTPError as exc:
        raise RetryableError(f"InfluxDB at {target.url} is unreachable: {exc}") from exc
    version = response.headers.get("X-Influxdb-Version", "")
    if not version:
        # InfluxDB 2.x and 3.x answer /ping too; a missing header means not 1.x.
        return "2"
    return api_of_version(version)
