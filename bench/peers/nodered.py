"""Peer: Node-RED 4.x with node-red-contrib-influxdb, installed and run by the benchmark.

:func:`install` runs ``npm install --prefix bench/node-red node-red node-red-contrib-influxdb``
(a git-ignored folder) when either package is missing. :func:`prepare` writes a user folder
with a headless ``settings.js`` (editor and HTTP nodes off, loopback only) and a flow:

    mqtt in (QoS 1, parsed JSON) -> [join: 5,000 messages or 1 s] -> function -> influxdb batch

The join node is used with one reading per message (BENCH.md's best Node-RED set-up for it);
with many readings per message each envelope goes to the batch node on its own. The function
maps an envelope to the batch node's points with citysense's schema (measurement = domain).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bench.harness import NODE_RED_DIR
from citysense.catalog import METRICS

PACKAGES = ("node-red", "node-red-contrib-influxdb")

_FUNCTION = """
const D = %s;
const envs = Array.isArray(msg.payload) ? msg.payload : [msg.payload];
const points = [];
for (const env of envs) {
  for (const r of env.readings) {
    const by = {};
    for (const k in r.values) {
      const d = D[k];
      if (d === undefined) continue;
      (by[d] || (by[d] = {}))[k] = r.values[k];
    }
    const tags = {device: r.device, kind: r.kind, district: r.district, site: r.site,
                  gateway: env.gateway};
    for (const d in by) points.push({measurement: d, tags: tags, fields: by[d], timestamp: r.t});
  }
}
msg.payload = points;
return msg;
"""

_SETTINGS = """module.exports = {
    uiHost: "127.0.0.1",
    uiPort: %d,
    httpAdminRoot: false,
    httpNodeRoot: false,
    flowFile: "flows.json",
    credentialSecret: false,
    editorTheme: { tours: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    functionExternalModules: false,
};
"""


def red_js() -> Path:
    return NODE_RED_DIR / "node_modules" / "node-red" / "red.js"


def installed() -> bool:
    return all((NODE_RED_DIR / "node_modules" / p / "package.json").exists() for p in PACKAGES)


def install(timeout: float = 600.0) -> None:
    """``npm install`` Node-RED and the InfluxDB nodes into ``bench/node-red`` if missing."""
    if installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: Node-RED cannot be measured")
    NODE_RED_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--prefix", str(NODE_RED_DIR), "--no-audit", "--no-fund", *PACKAGES],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0 or not installed():
        raise RuntimeError(f"npm install failed:\n{result.stderr[-2000:]}")


def flow(mqtt_port: int, influx_port: int, db: str, join: bool) -> list[dict[str, object]]:
    """The Node-RED flow (flows.json) for one measurement."""
    domains = json.dumps({name: m.domain for name, m in METRICS.items()})
    after_in = "join" if join else "fn"
    nodes: list[dict[str, object]] = [
        {"id": "tab", "type": "tab", "label": "citysense bench"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "mosquitto",
            "broker": "127.0.0.1",
            "port": str(mqtt_port),
            "clientid": "bench-node-red",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
            "autoUnsubscribe": True,
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": "tab",
            "name": "",
            "topic": "citysense/v1/+/up",
            "qos": "1",
            "datatype": "json",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [[after_in]],
        },
        {
            "id": "fn",
            "type": "function",
            "z": "tab",
            "name": "envelope to points",
            "func": _FUNCTION % domains,
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": "",
            "finalize": "",
            "libs": [],
            "wires": [["out"]],
        },
        {
            "id": "influx",
            "type": "influxdb",
            "hostname": "127.0.0.1",
            "port": str(influx_port),
            "protocol": "http",
            "database": db,
            "name": "influxd",
            "usetls": False,
            "tls": "",
            "influxdbVersion": "1.x",
        },
        {
            "id": "out",
            "type": "influxdb batch",
            "z": "tab",
            "influxdb": "influx",
            "precision": "ms",
            "retentionPolicy": "",
            "name": "",
            "wires": [],
        },
    ]
    if join:
        nodes.append(
            {
                "id": "join",
                "type": "join",
                "z": "tab",
                "name": "5000 or 1 s",
                "mode": "custom",
                "build": "array",
                "property": "payload",
                "propertyType": "msg",
                "key": "topic",
                "joiner": "\\n",
                "joinerType": "str",
                "accumulate": False,
                "timeout": "1",
                "count": "5000",
                "reduceRight": False,
                "reduceExp": "",
                "reduceInit": "",
                "reduceInitType": "",
                "reduceFixup": "",
                "wires": [["fn"]],
            }
        )
    for i, node in enumerate(nodes):
        if "z" in node:  # a flow node needs a position, or Node-RED takes it for a config node
            node.update(x=150 + 200 * i, y=100)
    return nodes


def prepare(
    workdir: Path, mqtt_port: int, influx_port: int, ui_port: int, db: str, join: bool
) -> list[str]:
    """Write the user folder; return the command that runs Node-RED on it."""
    install()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "settings.js").write_text(_SETTINGS % ui_port)
    (workdir / "flows.json").write_text(json.dumps(flow(mqtt_port, influx_port, db, join)))
    node = shutil.which("node") or "node"
    return [
        node,
        str(red_js()),
        "--userDir",
        str(workdir),
        "--settings",
        str(workdir / "settings.js"),
        "flows.json",
    ]


def version() -> str:
    try:
        return str(
            json.loads((NODE_RED_DIR / "node_modules/node-red/package.json").read_text())["version"]
        )
    except (OSError, ValueError, KeyError):
        return "not installed"
