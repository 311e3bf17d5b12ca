"""``citysense deploy broker``: a Mosquitto 2 configuration for the fleet (INTERFACES §10.1).

Writes, into one folder: ``mosquitto.conf`` (absolute paths), ``passwd`` (Mosquitto's own
PBKDF2-SHA512 format, ``$7$``), ``acl``, ``ca.crt``, ``server.crt``, ``server.key`` and per
client ``clients/NAME.{password,crt,key}``. Clients are every gateway of the registry,
``ingest``, ``alerts`` and ``operator``.

Two TLS listeners share one user table and one ACL: ``--port`` (default 8883) takes a user
name and password; ``--port + 1`` requires a client certificate signed by ``ca.crt`` and uses
its common name as the user name. Anonymous clients are refused on both.

A client id belongs to its user: ``use_username_as_clientid`` makes the broker replace
whatever client id a client sends by its user name, so nobody can open (take over, or read
the queue of) another user's session by sending its client id.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from citysense.mqtt_acl import SERVICE_USERS, mosquitto_acl
from citysense.privatefiles import private_dir, write_private
from provision.pki import Authority

#: Mosquitto's PBKDF2-SHA512 password hash: ``$7$<iterations>$<salt b64>$<hash b64>``.
PBKDF2_ITERATIONS = 101  #: what ``mosquitto_passwd`` 2.0 writes
SALT_BYTES = 12
PASSWORD_BYTES = 24  #: random bytes of each generated password (URL-safe base64 text)


#: The queue settings every citysense broker runs with (see deploy/mosquitto.conf for why).
QUEUE_SETTINGS = """\
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 1000
max_packet_size 4194304
persistence true
autosave_interval 30
autosave_on_changes false
persistent_client_expiration 14d
set_tcp_nodelay true
"""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``password`` in Mosquitto's ``passwd`` format (what ``mosquitto_passwd`` writes)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Does ``password`` match a ``$7$`` hash (for tests and checks)."""
    _, kind, iterations, salt, digest = hashed.split("$")
    if kind != "7":
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return secrets.compare_digest(got, base64.b64decode(digest))


def acl_rules(gateways: Iterable[str]) -> str:
    """The ACL file: each client may touch its own topics and nothing else
    (:mod:`citysense.mqtt_acl`, the table the embedded broker enforces too)."""
    header = "# citysense broker ACL: written by 'citysense deploy broker'\n\n"
    return header + mosquitto_acl([*gateways, *SERVICE_USERS])


def broker_config(folder: Path, bind: str, port: int) -> str:
    """``mosquitto.conf`` for files in ``folder`` (absolute paths)."""
    d = folder.resolve()
    # use_username_as_clientid: a client id belongs to its user (no session takeover). It is
    # a listener option: given before the first listener it would open Mosquitto's default
    # listener (port 1883, every interface, no TLS).
    tls = f"""\
use_username_as_clientid true
cafile {d / "ca.crt"}
certfile {d / "server.crt"}
keyfile {d / "server.key"}
"""
    return f"""\
# citysense broker: written by 'citysense deploy broker'. Serve it with
#   mosquitto -c {d / "mosquitto.conf"}
per_listener_settings false
allow_anonymous false
password_file {d / "passwd"}
acl_file {d / "acl"}
persistence_location {d / "data"}/
{QUEUE_SETTINGS}
# user name and password, over TLS
listener {port} {bind}
{tls}
# client certificate (its common name is the user name), over TLS
listener {port + 1} {bind}
{tls}require_certificate true
use_identity_as_username true
"""


def server_names(bind: str) -> list[str]:
    """Names the server certificate answers to: the bind address and this host's names."""
    names = [bind] if bind not in ("0.0.0.0", "::", "") else []
    host = socket.gethostname()
    names += [host, socket.getfqdn(host), "localhost", "127.0.0.1", "::1"]
    return [n for n in names if n]


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    folder: Path
    clients: tuple[str, ...]
    port: int


def write_broker(
    gateways: Iterable[str],
    output: Path,
    bind: str,
    port: int,
    *,
    authority: Authority | None = None,
) -> BrokerFiles:
    """Write the whole configuration (see the module doc) into ``output``.

    The CA's private key is not written: re-running issues a new CA and new credentials for
    everyone (see docs/security.md, rotation). ``authority`` is for tests that issue more.
    """
    gateway_ids = sorted(set(gateways))
    clients = (*gateway_ids, *SERVICE_USERS)
    folder = private_dir(output, tighten=True)
    private_dir(folder / "data", tighten=True)
    client_dir = private_dir(folder / "clients", tighten=True)
    ca = authority or Authority()
    server = ca.issue("citysense broker", server_names=server_names(bind))
    write_private(folder / "ca.crt", ca.cert, 0o644)
    write_private(folder / "server.crt", server.cert, 0o644)
    write_private(folder / "server.key", server.key)
    passwd: list[str] = []
    for name in clients:
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        passwd.append(f"{name}:{hash_password(password)}")
        issued = ca.issue(name)
        write_private(client_dir / f"{name}.password", password + "\n")
        write_private(client_dir / f"{name}.crt", issued.cert)
        write_private(client_dir / f"{name}.key", issued.key)
    write_private(folder / "passwd", "\n".join(passwd) + "\n")
    write_private(folder / "acl", acl_rules(gateway_ids))
    write_private(folder / "mosquitto.conf", broker_config(folder, bind, port))
    return BrokerFiles(folder, clients, port)
