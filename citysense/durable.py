"""The one recipe for a durable SQLite database (the gateway's outbox, the embedded store,
the dead letters): WAL, a commit is on disk when it returns (``synchronous=FULL``), explicit
transactions, one writer thread at a time."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from citysense.migrate import Migration, migrate, refuse_newer

#: Keep the WAL file below this after a checkpoint, bytes.
JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024


def connect_durable(path: Path, schema: str, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open (creating) ``path`` durably and apply ``schema``; :class:`sqlite3.Error` if not."""
    db = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


def connect_versioned(
    path: Path, store: str, migrations: Sequence[Migration], *, timeout: float = 30.0
) -> sqlite3.Connection:
    """:func:`connect_durable` for a store with schema versions (:mod:`citysense.migrate`): a
    database from a newer version is refused before it is opened (a
    :class:`~citysense.migrate.SchemaTooNewError`, file untouched); an older one is migrated
    in one transaction."""
    refuse_newer(path, store, migrations)
    db = connect_durable(path, "", timeout=timeout)
    try:
        migrate(db, path, store, migrations)
    except BaseException:
        db.close()
        raise
    return db
