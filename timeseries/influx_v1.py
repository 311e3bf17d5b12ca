"""InfluxDB 1.x HTTP API writer: ``POST /write`` with line protocol, ``precision=ms``.

Invariants: one request per :meth:`InfluxV1Writer.write` call while the server accepts it;
errors are classified by :func:`timeseries.writer.raise_for_write_status` (network errors,
5xx, 429 retryable; 400 isolates the bad points, 413 splits the batch). InfluxDB 1.x stores
the valid points of a request that it answers with a 400 (partial write), so re-sending them
while isolating is harmless: points are idempotent. Credentials go in HTTP basic auth and
are never logged.
"""

from __future__ import annotations

import gzip
import logging

import httpx

from citysense.errors import RetryableError
from timeseries.connection import InfluxTarget
from timeseries.writer import InfluxLineWriter, raise_for_write_status

log = logging.getLogger(__name__)


class InfluxV1Writer(InfluxLineWriter):
    """Writes points to an InfluxDB 1.x database (also InfluxDB 1.8+/2.x's 1.x endpoint)."""

    def __init__(self, target: InfluxTarget, *, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(target.url)
        self._client = httpx.AsyncClient(
            base_url=target.url,
            auth=target.basic_auth(),
            timeout=target.timeout,
            transport=transport,
            verify=target.verify(),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )
        self._params = {"db": target.database, "precision": "ms"}
        self._gzip = target.gzip

    async def _send_text(self, body: str) -> None:
        await self.write_body(body.encode())

    async def write_body(self, body: bytes) -> None:
        """Send pre-serialised line protocol as one request (no isolation)."""
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            response = await self._client.post(
                "/write", params=self._params, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise RetryableError(f"InfluxDB at {self._url} unreachable: {exc!r}") from exc
        raise_for_write_status(
            response.status_code, response.text, response.headers.get("Retry-After")
        )

    async def close(self) -> None:
        await self._client.aclose()
