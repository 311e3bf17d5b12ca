"""Schema versions of the SQLite stores: ``PRAGMA user_version`` and ordered migrations.

Every store (the outbox with its downlink queue, the dead letters, the embedded time-series
store) lists its :class:`Migration` steps, numbered from 1; step 1 is the schema of citysense
0.1.0, which carried no version (``user_version`` 0). At start the store calls
:func:`refuse_newer` *before* opening the file -- it reads the version from the database
header, so a database written by a newer citysense is refused (a :class:`SchemaTooNewError`,
exit 2 with one line) without a byte of it touched -- and then :func:`migrate` on its
connection, which runs the missing steps and sets the version in one transaction: an upgrade
interrupted half-way leaves the old schema and data as they were.

To change a schema, append a step; never edit one that shipped.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from citysense.durable import write_transaction
from citysense.errors import ConfigError

log = logging.getLogger(__name__)

_HEADER = b"SQLite format 3\x00"
_USER_VERSION_OFFSET = 60


class SchemaTooNewError(ConfigError):
    """The database was written by a newer citysense; it is left untouched."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: ``version`` (1, 2, ...), what it does, and its statements or function."""

    version: int
    description: str
    statements: tuple[str, ...] = ()
    apply: Callable[[sqlite3.Connection], None] | None = None


def statements(script: str) -> tuple[str, ...]:
    """A schema script split into its statements (no ``;`` inside literals)."""
    return tuple(s.strip() for s in script.split(";") if s.strip())


def latest(migrations: Sequence[Migration]) -> int:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, ... in order, not {versions}")
    return versions[-1]


def header_version(path: Path) -> int | None:
    """``user_version`` as the database file's header holds it; None when there is no file
    or it is not a SQLite database (yet)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
    except FileNotFoundError:
        return None
    if len(head) < 100 or not head.startswith(_HEADER):
        return None
    return int.from_bytes(head[_USER_VERSION_OFFSET : _USER_VERSION_OFFSET + 4], "big")


def _too_new(store: str, path: Path, found: int, known: int) -> SchemaTooNewError:
    return SchemaTooNewError(
        f"{store} {path} has schema version {found}, newer than this citysense knows "
        f"({known}): it was written by a newer version; left untouched (upgrade citysense, "
        "or restore the state saved before the upgrade)"
    )


def refuse_newer(path: Path, store: str, migrations: Sequence[Migration]) -> None:
    """Raise :class:`SchemaTooNewError` when the file at ``path`` is from a newer version.
    Reads the header only: call it before connecting (a connection may write)."""
    found = header_version(path)
    known = latest(migrations)
    if found is not None and found > known:
        raise _too_new(store, path, found, known)


def migrate(db: sqlite3.Connection, path: Path, store: str, migrations: Sequence[Migration]) -> int:
    """Bring ``db`` (autocommit mode, ``isolation_level=None``) to the latest version in one
    transaction; returns the version it had."""
    known = latest(migrations)
    with write_transaction(db):
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > known:
            raise _too_new(store, path, found, known)
        existing = int(db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
        for step in migrations:
            if step.version <= found:
                continue
            for statement in step.statements:
                db.execute(statement)
            if step.apply is not None:
                step.apply(db)
        if found != known:
            db.execute(f"PRAGMA user_version = {known:d}")
    if existing and found != known:  # a new file is not worth a line
        log.info("%s %s: schema migrated from version %d to %d", store, path, found, known)
    return found
