"""The one recipe for a durable SQLite database (the gateway's outbox, the embedded store,
the dead letters): WAL, a commit is on disk when it returns (``synchronous=FULL``), explicit
transactions (:func:`write_transaction`, :func:`store_transaction`), one writer thread at a
time."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from citysense.errors import RetryableError

if TYPE_CHECKING:
    from citysense.migrate import Migration

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
    from citysense.migrate import migrate, refuse_newer  # migrate uses write_transaction

    refuse_newer(path, store, migrations)
    db = connect_durable(path, "", timeout=timeout)
    try:
        migrate(db, path, store, migrations)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``db`` (autocommit mode, ``isolation_level=None``): ``BEGIN
    IMMEDIATE`` takes the write lock at once; committed when the block ends, rolled back when
    the block or the commit raises -- that exception propagates, never a failed rollback's."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def store_transaction(
    db: sqlite3.Connection | None, store: str, path: Path
) -> Iterator[sqlite3.Connection]:
    """:func:`write_transaction` on a store's connection (``None`` once the store is closed),
    its failures classified: a closed store, and an operational error of the block or of
    SQLite (locked, disk full, I/O error), raise :class:`~citysense.errors.RetryableError`
    naming ``store`` -- the caller keeps its data and tries again."""
    if db is None:
        raise RetryableError(f"the {store} is closed")
    try:
        with write_transaction(db):
            yield db
    except sqlite3.OperationalError as exc:
        raise RetryableError(f"{store} {path}: {exc}") from exc
