"""Writes the systemd units of deploy/systemd (run: python3 deploy/systemd/generate.py).

One place for the hardening every unit shares; each service adds its memory cap, start
timeout, ordering and devices. ``tests/deploy/test_units.py`` checks the files match.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SERVICES: dict[str, dict[str, str]] = {
    "edge": {
        "desc": "citysense gateway (CoAP and serial in, durable outbox, MQTT out)",
        "mem": "256M",
        "start": "120s",
        "after": "",
        "devices": "# Serial modules: only tty devices are usable (membership of dialout grants access).\n"
        "SupplementaryGroups=dialout\n"
        "DevicePolicy=closed\n"
        "DeviceAllow=char-ttyUSB rw\n"
        "DeviceAllow=char-ttyACM rw\n"
        "DeviceAllow=char-ttyS rw\n"
        "DeviceAllow=char-ttyAMA rw\n",
    },
    "ingest": {
        "desc": "citysense ingestor (MQTT shared subscription into storage)",
        "mem": "1G",
        # READY=1 once subscribed: give a broker that starts late some room
        "start": "300s",
        "after": " mosquitto.service influxdb.service",
        "devices": "PrivateDevices=yes\n",
    },
    "api": {
        "desc": "citysense operator API and dashboard",
        # the API and its quality checks' process: at 10,000 devices 165 MB and a 640 MB peak
        "mem": "2G",
        "start": "120s",
        "after": " influxdb.service",
        "devices": "PrivateDevices=yes\n",
        # after the filters of HARDENING, which this adds back to
        "extra": "# The quality checks' child process lowers its own priority (nice 10); with no\n"
        "# capabilities a process can lower its priority, never raise it.\n"
        "SystemCallFilter=setpriority\n",
    },
    "alerts": {
        "desc": "citysense alarms (rules over the store and the gateways' status)",
        "mem": "512M",
        "start": "120s",
        "after": " mosquitto.service influxdb.service",
        "devices": "PrivateDevices=yes\n",
    },
}

HARDENING = """UMask=0077
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""


def unit(name: str, template: bool) -> tuple[str, str]:
    """(file name, text) of one unit."""
    d = SERVICES[name]
    inst = "-%i" if template else ""
    filename = f"citysense-{name}{'@' if template else ''}.service"
    where = f"/{name}-INSTANCE" if template else ""
    head = (
        f"# {d['desc']}.\n"
        f"# Configuration: /etc/citysense/{name}{'-INSTANCE' if template else ''}.toml "
        f"(any option of `citysense {name} --help`);\n"
        f"# state: /var/lib/citysense{where}; logs: journalctl -u "
        f"{filename.replace('@', '@INSTANCE')}.\n"
        "# Written by deploy/systemd/generate.py (edit that, then run it).\n"
    )
    if template:
        head += (
            f"# One unit per instance: systemctl enable --now citysense-{name}@NAME "
            "(NAME: [a-z0-9-]).\n"
        )
    text = (
        head
        + f"""[Unit]
Description={d["desc"]}{" (%i)" if template else ""}
Documentation=file:/usr/share/doc/citysense/deploy.md
Wants=network-online.target
After=network-online.target{d["after"]}

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/citysense {name} --config %E/citysense/{name}{inst}.toml
Restart=on-failure
RestartSec=5s
TimeoutStartSec={d["start"]}
TimeoutStopSec=30s
WatchdogSec=30s
User=citysense
Group=citysense
StateDirectory=citysense{"/" + name + "-%i" if template else ""}
StateDirectoryMode=0700
ConfigurationDirectory=citysense
ConfigurationDirectoryMode=0755
MemoryMax={d["mem"]}
TasksMax=64
LimitNOFILE=65536
{d["devices"]}{HARDENING}{d.get("extra", "")}
[Install]
WantedBy=multi-user.target
"""
    )
    return filename, text


def units() -> dict[str, str]:
    return dict(unit(name, template) for name in SERVICES for template in (False, True))


def main() -> int:
    for filename, text in units().items():
        (HERE / filename).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
