"""Device keys: one secret per device, for OSCORE or DTLS 1.2 PSK (INTERFACES.md section 10.4).

The device keys file is CSV with the header ``device,scheme,id,secret``:

* ``oscore``: ``id`` is the device's OSCORE sender id in hex (1-7 bytes), ``secret`` the
  16-byte master secret in hex. Empty master salt, AES-CCM-16-64-128, HKDF-SHA256, replay
  window 32; the gateway's own sender id is empty.
* ``dtls-psk``: ``id`` is the PSK identity (printable ASCII, 1-32 bytes), ``secret`` the
  16-byte key in hex.

Every bad row is reported with its line number; a file with bad rows is refused whole. The
file holds secrets: it is written 0600, and a file that others may read is refused.
Pure apart from :func:`read_device_keys` and :func:`write_device_keys`.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from citysense.errors import InputError
from citysense.model import DEVICE_ID_RE
from citysense.privatefiles import write_private

OSCORE = "oscore"
DTLS_PSK = "dtls-psk"
SCHEMES: tuple[str, ...] = (OSCORE, DTLS_PSK)
COLUMNS: tuple[str, ...] = ("device", "scheme", "id", "secret")

#: Every key is exactly this long: DTLSSocket copies a PSK into a 16-byte buffer unchecked.
SECRET_BYTES = 16
#: AES-CCM-16-64-128 has a 13-byte nonce: sender ids of at most 13 - 6 bytes.
OSCORE_ID_MAX = 7
PSK_IDENTITY_MAX = 32
OSCORE_ALGORITHM = "AES-CCM-16-64-128"
OSCORE_KDF = "sha256"
OSCORE_WINDOW = 32

_PRINTABLE = re.compile(rb"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """One device's credential: its scheme, its id on the wire and its secret."""

    device: str
    scheme: str
    id: bytes
    secret: bytes = b""

    def __repr__(self) -> str:  # never show the secret
        return f"DeviceKey({self.device!r}, {self.scheme!r}, {self.id!r})"


def _check(key: DeviceKey) -> None:
    if not DEVICE_ID_RE.fullmatch(key.device):
        raise ValueError(f"invalid device id {key.device[:96]!r}")
    if len(key.secret) != SECRET_BYTES:
        raise ValueError(f"{key.device}: the secret must be {SECRET_BYTES} bytes")
    if key.scheme == OSCORE:
        if not 1 <= len(key.id) <= OSCORE_ID_MAX:
            raise ValueError(f"{key.device}: an OSCORE id is 1-{OSCORE_ID_MAX} bytes")
    elif key.scheme == DTLS_PSK:
        if not 1 <= len(key.id) <= PSK_IDENTITY_MAX or not _PRINTABLE.fullmatch(key.id):
            raise ValueError(
                f"{key.device}: a PSK identity is 1-{PSK_IDENTITY_MAX} printable ASCII bytes"
            )
    else:
        raise ValueError(f"{key.device}: scheme {key.scheme!r} is not one of {', '.join(SCHEMES)}")


def parse_device_keys(text: str) -> list[DeviceKey]:
    """The keys of a device keys file; :class:`InputError` naming the first bad line."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or tuple(c.strip() for c in header) != COLUMNS:
        raise InputError(f"line 1: the header must be {','.join(COLUMNS)}", "bad_header")
    keys: list[DeviceKey] = []
    devices: set[str] = set()
    ids: set[tuple[str, bytes]] = set()
    for line, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            if len(row) != len(COLUMNS):
                raise ValueError(f"expected {len(COLUMNS)} columns, found {len(row)}")
            device, scheme, ident, secret = (c.strip() for c in row)
            key = DeviceKey(
                device,
                scheme,
                bytes.fromhex(ident) if scheme == OSCORE else ident.encode("ascii"),
                bytes.fromhex(secret),
            )
            _check(key)
            if device in devices:
                raise ValueError(f"{device} appears twice")
            if (scheme, key.id) in ids:
                raise ValueError(f"{device}: id {ident} is used by another device")
        except (ValueError, UnicodeError) as exc:
            raise InputError(f"line {line}: {exc}", "bad_row") from None
        devices.add(device)
        ids.add((scheme, key.id))
        keys.append(key)
    return keys


def format_device_keys(keys: Iterable[DeviceKey]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for key in keys:
        ident = key.id.hex() if key.scheme == OSCORE else key.id.decode("ascii")
        writer.writerow((key.device, key.scheme, ident, key.secret.hex()))
    return out.getvalue()


def read_device_keys(path: str | Path) -> list[DeviceKey]:
    """Read and check a keys file; refuses one that group or others may read."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(
                f"{p} may be read by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it",
                "insecure_file",
            )
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: {exc.strerror or exc}", "unreadable") from exc
    return parse_device_keys(text)


def write_device_keys(path: str | Path, keys: Iterable[DeviceKey]) -> None:
    """Write the file 0600 from its first byte, atomically (a temporary file renamed over it)."""
    write_private(Path(path), format_device_keys(keys))


def _psk_identity(device: str, taken: set[bytes]) -> bytes:
    ident = device.encode("ascii")
    if len(ident) > PSK_IDENTITY_MAX or ident in taken:
        # long ids: the tail (an IMEI's digits are the distinctive part), made unique
        ident = ident[-(PSK_IDENTITY_MAX - 9) :]
        while ident in taken or len(ident) > PSK_IDENTITY_MAX:
            ident = ident[-(PSK_IDENTITY_MAX - 9) :] + b"~" + secrets.token_hex(4).encode()
    return ident


def generate_device_keys(
    devices: Sequence[str],
    scheme: str,
    existing: Mapping[str, DeviceKey] | None = None,
    rotate: Iterable[str] = (),
) -> list[DeviceKey]:
    """One key per device of ``devices``: kept from ``existing`` (same scheme), new otherwise.

    A device in ``rotate`` keeps its id but gets a new secret. OSCORE ids are the shortest
    unused big-endian numbers (1-3 bytes for a city's fleet: they travel in every request).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    old = {d: k for d, k in (existing or {}).items() if k.scheme == scheme}
    renew = set(rotate)
    taken = {k.id for k in old.values()}
    out: list[DeviceKey] = []
    counter = 0
    for device in devices:
        kept = old.get(device)
        if kept is not None:
            secret = secrets.token_bytes(SECRET_BYTES) if device in renew else kept.secret
            out.append(DeviceKey(device, scheme, kept.id, secret))
            continue
        if scheme == OSCORE:
            while True:
                counter += 1
                ident = counter.to_bytes((counter.bit_length() + 7) // 8, "big")
                if ident not in taken:
                    break
        else:
            ident = _psk_identity(device, taken)
        taken.add(ident)
        key = DeviceKey(device, scheme, ident, secrets.token_bytes(SECRET_BYTES))
        _check(key)
        out.append(key)
    return out


def oscore_context_files(key: DeviceKey, role: str) -> dict[str, dict[str, object]]:
    """The two files of an aiocoap OSCORE security-context folder, for ``gateway`` or ``device``.

    The gateway's sender id is empty; the device's is ``key.id``.
    """
    if key.scheme != OSCORE:
        raise ValueError(f"{key.device} has no OSCORE key")
    own, peer = (b"", key.id) if role == "gateway" else (key.id, b"")
    return {
        "settings.json": {
            "sender-id_hex": own.hex(),
            "recipient-id_hex": peer.hex(),
            "algorithm": OSCORE_ALGORITHM,
            "kdf-hashfun": OSCORE_KDF,
            "window": OSCORE_WINDOW,
        },
        "secret.json": {"secret_hex": key.secret.hex(), "salt_hex": ""},
    }
