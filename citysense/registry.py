"""The device registry: which devices exist, their kind, place and gateway.

Read from a CSV file with the header ``device,kind,district,site,lat,lon,gateway``
(INTERFACES.md section 8). Every bad row is reported with its line number and reason; a
registry with bad rows is refused whole, so a typo never silently drops a device.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from citysense.catalog import KINDS
from citysense.errors import ConfigError, InputError, RegistryError
from citysense.model import DEVICE_ID_RE, GATEWAY_ID_RE, PLACE_ID_RE

COLUMNS: tuple[str, ...] = ("device", "kind", "district", "site", "lat", "lon", "gateway")


@dataclass(frozen=True, slots=True)
class Device:
    device: str
    kind: str
    district: str
    site: str
    lat: float
    lon: float
    gateway: str


class Registry(Mapping[str, Device]):
    """Devices by id; read-only."""

    __slots__ = ("_devices",)

    def __init__(self, devices: Iterable[Device] = ()) -> None:
        self._devices: dict[str, Device] = {}
        for d in devices:
            self._devices[d.device] = d

    def __getitem__(self, device: str) -> Device:
        return self._devices[device]

    def __iter__(self) -> Iterator[str]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def of_gateway(self, gateway: str) -> Registry:
        return Registry(d for d in self._devices.values() if d.gateway == gateway)


def _parse_row(row: list[str], line: int) -> Device:
    if len(row) != len(COLUMNS):
        raise RegistryError(f"expected {len(COLUMNS)} columns, found {len(row)}", line)
    device, kind, district, site, lat_s, lon_s, gateway = (c.strip() for c in row)
    if not DEVICE_ID_RE.fullmatch(device):
        raise RegistryError(f"invalid device id {device!r}", line)
    if kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})", line)
    if not PLACE_ID_RE.fullmatch(district):
        raise RegistryError(f"invalid district {district!r}", line)
    if not PLACE_ID_RE.fullmatch(site):
        raise RegistryError(f"invalid site {site!r}", line)
    if not GATEWAY_ID_RE.fullmatch(gateway):
        raise RegistryError(f"invalid gateway id {gateway!r}", line)
    try:
        lat, lon = float(lat_s), float(lon_s)
    except ValueError as exc:
        raise RegistryError(f"lat/lon {lat_s!r},{lon_s!r} are not numbers", line) from exc
    if not (math.isfinite(lat) and -90 <= lat <= 90 and math.isfinite(lon) and -180 <= lon <= 180):
        raise RegistryError(f"lat/lon {lat},{lon} out of range", line)
    return Device(device, kind, district, site, lat, lon, gateway)


def parse_registry(text: str) -> Registry:
    """Parse registry CSV text; raises :class:`RegistryError` for the first bad row."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != list(COLUMNS):
        raise RegistryError(f"header must be {','.join(COLUMNS)}", 1)
    devices: dict[str, Device] = {}
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        d = _parse_row(row, line)
        if d.device in devices:
            raise RegistryError(f"device {d.device} listed twice", line, "duplicate")
        devices[d.device] = d
    return Registry(devices.values())


def load_registry(path: str | Path) -> Registry:
    """Read a registry file; an unreadable file is a :class:`RegistryError` at line 0."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read {path}: {exc}", 0, "unreadable") from exc
    return parse_registry(text)


def load_registry_option(path: str | Path, option: str = "--registry") -> Registry:
    """:func:`load_registry` for a command-line option: a bad file is a :class:`ConfigError`
    naming the option (the command exits 2 with that one line)."""
    try:
        return load_registry(path)
    except InputError as exc:
        raise ConfigError(f"{option} {path}: {exc}") from exc


def format_registry(devices: Iterable[Device]) -> str:
    """Registry CSV text for ``devices`` (used by ``citysense fleet generate``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for d in devices:
        writer.writerow(
            [d.device, d.kind, d.district, d.site, f"{d.lat:.6f}", f"{d.lon:.6f}", d.gateway]
        )
    return out.getvalue()
