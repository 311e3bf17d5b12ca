"""Shared fixtures: real Mosquitto and real influxd on free loopback ports.

* ``mosquitto`` -- a fresh broker per test (it starts in milliseconds); tests may stop,
  restart or ``kill()`` it.
* ``influxd`` -- one influxd for the session; ``influx_db`` gives each test its own database
  on it, so tests never see each other's points.
* ``influxd_private`` -- an influxd of the test's own, for tests that stop or kill it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import InfluxServer, MosquittoServer


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx_db(influxd: InfluxServer) -> Iterator[InfluxServer]:
    """The session's influxd, with ``.db`` set to a database of this test's own."""
    name = "t_" + uuid.uuid4().hex[:12]
    influxd.query(f'CREATE DATABASE "{name}"', method="POST")
    previous = influxd.db
    influxd.db = name
    try:
        yield influxd
    finally:
        influxd.db = previous
        influxd.query(f'DROP DATABASE "{name}"', method="POST")


@pytest.fixture
def influxd_private(tmp_path: Path) -> Iterator[InfluxServer]:
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    try:
        yield server
    finally:
        server.stop()
