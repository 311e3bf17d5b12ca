"""End to end with authenticated devices: the simulated fleet sends with OSCORE, then with
DTLS 1.2 PSK (aiocoap's client stack on the device side), through the real gateway, broker,
ingestor and InfluxDB; the set check holds (every acknowledged reading stored once, values
equal, nothing invented) and every uplink was authenticated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citysense.credentials import DTLS_PSK, OSCORE
from tests.e2e.pipeline import Pipeline
from tests.servers import InfluxServer, MosquittoServer

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(params=[OSCORE, DTLS_PSK])
def pipeline(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mosquitto: MosquittoServer,
    influxd_private: InfluxServer,
) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path, mosquitto, influxd_private, devices=40, scheme=request.param)
    p.start()
    try:
        yield p
    finally:
        p.close()


def test_fleet_with_device_keys_set_check(pipeline: Pipeline) -> None:
    p = pipeline
    p.start_load()
    time.sleep(10.0)
    acc = p.account()
    context = f"{acc}\n{p.logs()}"
    assert acc.acknowledged >= 200, context
    assert acc.lost == acc.duplicates == acc.invented == acc.wrong_values == 0, context
    assert not acc.rejected and acc.unanswered == 0, context
    assert acc.stored >= acc.expected, context
    metrics = p.gateway.metrics()
    scheme = "oscore" if p.coaps_port is None else "dtls-psk"
    ok = f'citysense_edge_device_uplinks_total{{outcome="ok",scheme="{scheme}"}}'
    assert ok in metrics and 'scheme="none"' not in metrics, metrics
