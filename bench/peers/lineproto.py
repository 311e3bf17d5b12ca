"""Envelope to InfluxDB line protocol, the way a simple writer would do it (no caching).

Same schema as citysense (INTERFACES.md section 6): measurement = the metric's domain, tags
``device, kind, district, site, gateway``, fields in their catalog type, millisecond time.
No validation: the peers trust their input, which citysense does not.
"""

from __future__ import annotations

import json

from citysense.catalog import METRICS

DOMAIN = {name: m.domain for name, m in METRICS.items()}
BOOLEAN = frozenset(name for name, m in METRICS.items() if m.type == "bool")
_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})


def envelope_lines(payload: bytes | bytearray) -> list[str]:
    """One line per (reading, domain) of a batch envelope."""
    env = json.loads(payload)
    gateway = env["gateway"].translate(_ESCAPES)
    lines: list[str] = []
    for r in env["readings"]:
        tags = (
            f"device={r['device'].translate(_ESCAPES)},kind={r['kind'].translate(_ESCAPES)},"
            f"district={r['district'].translate(_ESCAPES)},site={r['site'].translate(_ESCAPES)},"
            f"gateway={gateway}"
        )
        by_domain: dict[str, list[str]] = {}
        for name, value in r["values"].items():
            domain = DOMAIN.get(name)
            if domain is None:
                continue
            text = ("true" if value else "false") if name in BOOLEAN else repr(float(value))
            by_domain.setdefault(domain, []).append(f"{name}={text}")
        for domain, fields in by_domain.items():
            lines.append(f"{domain},{tags} {','.join(fields)} {r['t']}")
    return lines
