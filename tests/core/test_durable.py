"""The one durable SQLite recipe: its write transaction and the stores' classification of
failures (a closed store, an operational error: retryable, nothing half-written)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from citysense.durable import connect_durable, store_transaction, write_transaction
from citysense.errors import RetryableError

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);"


def rows(db: sqlite3.Connection) -> list[tuple[int, str]]:
    return db.execute("SELECT k, v FROM t ORDER BY k").fetchall()


def test_a_block_that_ends_is_committed(tmp_path: Path) -> None:
    db = connect_durable(tmp_path / "d.sqlite3", SCHEMA)
    with write_transaction(db) as tx:
        assert tx is db and db.in_transaction
        db.execute("INSERT INTO t VALUES (1, 'a')")
    assert not db.in_transaction
    other = sqlite3.connect(tmp_path / "d.sqlite3")
    assert rows(other) == [(1, "a")]


def test_a_block_that_returns_early_is_committed(tmp_path: Path) -> None:
    db = connect_durable(tmp_path / "d.sqlite3", SCHEMA)

    def work() -> None:
        with write_transaction(db):
            db.execute("INSERT INTO t VALUES (1, 'a')")
            return

    work()
    assert not db.in_transaction and rows(db) == [(1, "a")]


def test_a_block_that_raises_is_rolled_back_with_its_own_error(tmp_path: Path) -> None:
    db = connect_durable(tmp_path / "d.sqlite3", SCHEMA)
    with pytest.raises(KeyError), write_transaction(db):
        db.execute("INSERT INTO t VALUES (1, 'a')")
        raise KeyError("the block's own")
    assert not db.in_transaction and rows(db) == []


def test_a_constraint_error_is_rolled_back_and_not_translated(tmp_path: Path) -> None:
    db = connect_durable(tmp_path / "d.sqlite3", SCHEMA)
    with pytest.raises(sqlite3.IntegrityError), store_transaction(db, "test store", tmp_path):
        db.execute("INSERT INTO t VALUES (1, 'a')")
        db.execute("INSERT INTO t VALUES (1, 'b')")
    assert not db.in_transaction and rows(db) == []


def test_a_closed_store_is_retryable(tmp_path: Path) -> None:
    with (
        pytest.raises(RetryableError, match="the test store is closed"),
        store_transaction(None, "test store", tmp_path),
    ):
        pytest.fail("the block ran")


def test_a_locked_store_is_retryable_and_names_the_store(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    db = connect_durable(path, SCHEMA, timeout=0.05)
    holder = connect_durable(path, "")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with (
            pytest.raises(RetryableError, match=f"test store {path}: database is locked"),
            store_transaction(db, "test store", path),
        ):
            pytest.fail("the block ran")
    finally:
        holder.execute("ROLLBACK")
    assert not db.in_transaction


def test_an_operational_error_in_the_block_is_retryable_and_rolled_back(tmp_path: Path) -> None:
    db = connect_durable(tmp_path / "d.sqlite3", SCHEMA)
    with pytest.raises(RetryableError) as caught, store_transaction(db, "test store", tmp_path):
        db.execute("INSERT INTO t VALUES (1, 'a')")
        db.execute("INSERT INTO missing VALUES (1)")
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert not db.in_transaction and rows(db) == []
