"""``citysense deploy influx``: the database with a writer and a reader (INTERFACES §10.2).

Runs InfluxQL as the admin user on an InfluxDB 1.x server (``auth-enabled = true``):
``CREATE DATABASE``, users ``citysense_writer`` (``GRANT WRITE``) and ``citysense_reader``
(``GRANT READ``), each with a new random password written to ``DIR/<user>.password``
(0600). Re-running rotates both passwords (``SET PASSWORD``) and keeps the grants.
"""

from __future__ import annotations

import json
import secrets
import ssl
from pathlib import Path

import httpx

from citysense.errors import ConfigError
from citysense.privatefiles import private_dir, write_private

WRITER = "citysense_writer"
READER = "citysense_reader"
PASSWORD_BYTES = 24


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxAdmin:
    """InfluxQL statements as an admin (basic auth), each answered or a ConfigError."""

    def __init__(self, url: str, username: str, password: str, *, ca: str | None = None) -> None:
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            verify = ssl.create_default_context(cafile=ca)
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            auth=httpx.BasicAuth(username, password), verify=verify, timeout=30.0
        )

    def close(self) -> None:
        self._client.close()

    def run(self, statement: str) -> dict[str, object]:
        try:
            response = self._client.post(f"{self.url}/query", data={"q": statement})
        except httpx.HTTPError as exc:
            raise ConfigError(f"--influx {self.url}: {exc}") from exc
        if response.status_code in (401, 403):
            raise ConfigError(f"--influx {self.url}: the admin user was refused")
        try:
            body = json.loads(response.content)
            result = body["results"][0]
        except (ValueError, KeyError, IndexError) as exc:
            raise ConfigError(
                f"--influx {self.url}: unexpected answer {response.status_code}"
            ) from exc
        if "error" in result:
            raise ConfigError(f"--influx {self.url}: {result['error']}")
        return dict(result)

    def users(self) -> set[str]:
        result = self.run("SHOW USERS")
        out: set[str] = set()
        for series in result.get("series", []) or []:  # type: ignore[attr-defined]
            out.update(str(row[0]) for row in series.get("values", []))
        return out


def deploy_influx(
    url: str, admin: str, admin_password: str, database: str, output: Path, *, ca: str | None
) -> dict[str, Path]:
    """Create (or update) the database and both users; returns the password files."""
    client = InfluxAdmin(url, admin, admin_password, ca=ca)
    try:
        folder = private_dir(output, tighten=True)
        client.run(f"CREATE DATABASE {_ident(database)}")
        existing = client.users()
        written: dict[str, Path] = {}
        for user, grant in ((WRITER, "WRITE"), (READER, "READ")):
            password = secrets.token_urlsafe(PASSWORD_BYTES)
            # the file first: a password set on the server and lost here locks the user out
            written[user] = write_private(folder / f"{user}.password", password + "\n")
            if user in existing:
                client.run(f"SET PASSWORD FOR {_ident(user)} = {_quote(password)}")
                client.run(f"REVOKE ALL ON {_ident(database)} FROM {_ident(user)}")
            else:
                client.run(f"CREATE USER {_ident(user)} WITH PASSWORD {_quote(password)}")
            client.run(f"GRANT {grant} ON {_ident(database)} TO {_ident(user)}")
        return written
    finally:
        client.close()
