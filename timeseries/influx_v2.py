"""InfluxDB 2.x API writer through ``influxdb-client``'s *synchronous* WriteApi.

Why synchronous: the client's batching mode drops a batch once its own retry window is over
and loses what it has not flushed when the process exits; here the caller owns batching,
retries and acknowledgement, so each :meth:`InfluxV2Writer.write` is one blocking request run
in a worker thread, and the client's own retries are off. Also serves InfluxDB 1.8+ (token
``user:password``, bucket ``db/rp``) and 3.x writes. Errors are classified as for 1.x.
"""

from __future__ import annotations

import asyncio
import logging

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from citysense.errors import RetryableError
from timeseries.connection import InfluxTarget
from timeseries.writer import InfluxLineWriter, raise_for_write_status

log = logging.getLogger(__name__)


def _header(headers: object, name: str) -> str | None:
    if headers is None:
        return None
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get(name) or get(name.lower())
    return str(value) if value is not None else None


class InfluxV2Writer(InfluxLineWriter):
    """Writes points to an InfluxDB 2.x bucket (token, org)."""

    def __init__(self, target: InfluxTarget) -> None:
        super().__init__(target.url)
        token = target.token
        if token is None and target.username:
            token = f"{target.username}:{target.password or ''}"  # InfluxDB 1.8 compatibility
        self._client = InfluxDBClient(
            url=target.url,
            token=token or "",
            org=target.org or "-",
            timeout=int(target.timeout * 1000),
            enable_gzip=target.gzip,
            retries=False,
            ssl_ca_cert=target.ca,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket = target.bucket
        self._org = target.org or "-"

    async def _send_text(self, body: str) -> None:
        await asyncio.to_thread(self._send_blocking, body)

    def _send_blocking(self, body: str) -> None:
        try:
            self._api.write(
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            data = exc.body
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
            raise_for_write_status(
                int(exc.status or 500), text, _header(exc.headers, "Retry-After")
            )
        except Exception as exc:  # urllib3 and socket errors: the request may not have arrived
            raise RetryableError(f"InfluxDB at {self._url} unreachable: {exc!r}") from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        self._api.close()
        self._client.close()
