"""Serial sources through the gateway, over a real pseudo-terminal: a simulated BC95 module's
datagrams take the CoAP path's validation and outbox; its radio figures become
``device_health`` readings of the module's IMEI; everything reaches the ingestor."""

from __future__ import annotations

import time
from pathlib import Path

from citysense.registry import Device, format_registry
from citysense.senml import CF_SENML_CBOR, CF_SENML_JSON, encode_values
from simulators.module import ModuleTimings, SimulatedModule
from tests.edge.gateway import (
    GATEWAY,
    GatewayThread,
    edge_settings,
    ingestor,
    metric,
    outbox_depth,
)
from tests.servers import MosquittoServer, wait_until

SENSOR = "urn:imei:867726031076062"


def test_module_datagrams_and_radio_figures_reach_the_cloud(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    sim = SimulatedModule("bc95", seed=4, speed=50.0, timings=ModuleTimings(max_delay=0.05))
    module_id = f"urn:imei:{sim.imei}"
    (tmp_path / "registry.csv").write_text(
        format_registry(
            [
                Device(SENSOR, "air_station", "zhengdong", "ruyi-lake", 34.7, 113.7, GATEWAY),
                Device(module_id, "water_meter", "zhengdong", "gw-site", 34.7, 113.7, GATEWAY),
            ]
        )
    )
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url, serial=f"{sim.device}:bc95")
    t0 = int(time.time() * 1000) - 60_000
    good = [
        encode_values(SENSOR, t0 + i * 1000, {"pm25": 10.0 + i}, cf)
        for i, cf in enumerate([CF_SENML_JSON, CF_SENML_CBOR, CF_SENML_JSON, CF_SENML_CBOR])
    ]
    bad = [
        encode_values(SENSOR, t0 + 500, {"pm25": -3.0}, CF_SENML_JSON),  # out of range: 4.00
        encode_values("urn:imei:1", t0, {"pm25": 3.0}, CF_SENML_JSON),  # unknown: 4.03
        b"garbage that is neither JSON nor CBOR",
    ]
    with sim, ingestor(mosquitto.url) as ing, GatewayThread(settings):
        # the module's radio figures arrive first, once the driver has attached it
        wait_until(
            lambda: any(k[0] == module_id and k[1] == "rsrp" for k in ing.keys),
            60,
            "radio figures as device_health readings",
        )
        for payload in good + bad:
            wait_until(lambda p=payload: sim.inject_datagram(p), 30, "the module to take it")
        want = {(SENSOR, "pm25", t0 + i * 1000) for i in range(4)}
        wait_until(lambda: want <= ing.keys, 60, "every good datagram at the ingestor")
        wait_until(
            lambda: metric(settings, "citysense_edge_serial_datagrams_total") == 7,
            30,
            "every datagram counted",
        )
        text_codes = {
            code: metric_with(settings, "citysense_edge_serial_datagrams_total", code)
            for code in ("2.04", "4.00", "4.03", "4.15")
        }
        assert text_codes == {"2.04": 4, "4.00": 1, "4.03": 1, "4.15": 1}
        assert not any(k[2] == t0 + 500 for k in ing.keys)  # refused: not stored
        wait_until(lambda: outbox_depth(settings) == 0, 30, "the outbox to empty")


def metric_with(settings: object, name: str, code: str) -> float:
    from tests.edge.gateway import metrics_text

    for line in metrics_text(settings).splitlines():  # type: ignore[arg-type]
        if line.startswith(f'{name}{{code="{code}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_module_not_in_the_registry_is_counted_not_fatal(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    sim = SimulatedModule("sim7020", seed=9, speed=50.0, timings=ModuleTimings(max_delay=0.05))
    (tmp_path / "registry.csv").write_text(
        format_registry(
            [Device(SENSOR, "air_station", "zhengdong", "ruyi-lake", 34.7, 113.7, GATEWAY)]
        )
    )
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url, serial=f"{sim.device}:sim7020")
    t = int(time.time() * 1000) - 1000
    with sim, ingestor(mosquitto.url) as ing, GatewayThread(settings):
        wait_until(
            lambda: metric(settings, "citysense_edge_unknown_modules_total") >= 1,
            60,
            "the unknown module counted",
        )
        payload = encode_values(SENSOR, t, {"pm10": 20.0}, CF_SENML_JSON)
        wait_until(lambda: sim.inject_datagram(payload), 30, "the module to take it")
        wait_until(lambda: (SENSOR, "pm10", t) in ing.keys, 60, "the sensor's reading")
        assert metric(settings, "citysense_edge_serial_module_up") == 1
