"""Files the services create are 0600 in folders made 0700 (SQLite's -wal and -shm too)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from citysense.model import Reading
from citysense.privatefiles import private_dir
from edge.outbox import SqliteOutbox
from ingest.deadletters import DeadLetterStore
from timeseries.sqlite_store import SqliteWriter


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_state_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0o022)  # a usual umask: what the services create must not follow it
    try:

        async def outbox() -> None:
            async with SqliteOutbox(state / "outbox.db") as ob:
                await ob.add([Reading("d-1", "air_station", "d", "s", 1, {"pm25": 1.0})])
                assert (state / "outbox.db-wal").exists()
                assert set(modes(state).values()) == {0o600}, modes(state)

        asyncio.run(outbox())
        letters = DeadLetterStore(state / "deadletters.db")
        writer = SqliteWriter(state / "timeseries.sqlite3")
        try:
            found = modes(state)
            assert {"outbox.db", "deadletters.db", "timeseries.sqlite3"} <= set(found)
            assert set(found.values()) == {0o600}, found
        finally:
            letters.close()
            asyncio.run(writer.close())
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_an_existing_shared_folder_is_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    private_dir(shared, tighten=True)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
