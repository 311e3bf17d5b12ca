"""Bounded dead letters: eviction by age and by size, counted; large payloads kept truncated
with their length and digest."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from ingest.deadletters import PAYLOAD_MAX, DeadLetterStore
from ingest.pipeline import DeadLetter

DAY_MS = 86_400_000


def letter(i: int, size: int = 100) -> DeadLetter:
    return DeadLetter("malformed", f"bad {i}", "citysense/v1/gw-01/up", os.urandom(size), "gw-01")


def test_a_large_payload_is_kept_truncated_with_its_length_and_digest(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "d.sqlite3")
    big = letter(0, 3 * 1024 * 1024)
    small = letter(1, 10)
    store.add([big, small], 1000)
    newest, oldest = store.recent()
    store.close()
    assert oldest.truncated and len(oldest.payload) == PAYLOAD_MAX
    assert oldest.payload == big.payload[:PAYLOAD_MAX]
    assert oldest.size == len(big.payload)
    assert oldest.digest == hashlib.sha256(big.payload).hexdigest()
    assert not newest.truncated and newest.payload == small.payload and newest.size == 10


def test_letters_older_than_the_age_bound_are_evicted_and_counted(tmp_path: Path) -> None:
    now = [100 * DAY_MS / 1000]
    evicted: list[tuple[str, int]] = []
    path = tmp_path / "d.sqlite3"
    store = DeadLetterStore(
        path,
        max_age_ms=30 * DAY_MS,
        on_evicted=lambda c, n: evicted.append((c, n)),
        clock=lambda: now[0],
    )
    store.add([letter(i) for i in range(5)], 60 * DAY_MS)  # 40 days old: gone at once
    store.add([letter(i) for i in range(3)], 90 * DAY_MS)
    assert evicted == [("age", 5)]
    assert sum(store.counts().values()) == 3
    assert store.evictions() == {"age": 5}
    store.close()
    # the bound applies at start too, and the counts survive a restart
    now[0] = 200 * DAY_MS / 1000
    store = DeadLetterStore(path, max_age_ms=30 * DAY_MS, clock=lambda: now[0])
    assert store.counts() == {} and store.evictions() == {"age": 8}
    store.close()


def test_the_size_bound_evicts_the_oldest_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    cap = 1024 * 1024
    evicted: list[int] = []
    store = DeadLetterStore(path, max_bytes=cap, on_evicted=lambda c, n: evicted.append(n))
    for i in range(300):  # 300 x 16 KiB: nearly 5 MiB offered
        store.add([letter(i, 16 * 1024)], 1000 + i)
        assert store._used_bytes(store._db) <= cap  # type: ignore[arg-type]
    kept = store.recent(1000)
    total_evicted = store.evictions()["size"]
    store.close()
    assert total_evicted == sum(evicted) == 300 - len(kept)
    assert 40 <= len(kept) < 64
    # the newest are kept, the oldest went first
    assert [d.message for d in kept] == [f"bad {i}" for i in range(299, 299 - len(kept), -1)]
    assert path.stat().st_size <= 2 * cap


def test_the_ingestor_counts_evictions_in_its_metrics(tmp_path: Path) -> None:
    from citysense.config import load_settings
    from ingest.metrics import IngestMetrics
    from ingest.service import open_dead_letters

    settings = load_settings(
        "ingest", {"state_dir": str(tmp_path), "dead_letter_max_mb": "0.25"}, environ={}
    )
    metrics = IngestMetrics()
    store = open_dead_letters(settings, metrics)
    try:
        now = int(time.time() * 1000)
        for i in range(40):
            store.add([letter(i, 16 * 1024)], now + i)
    finally:
        store.close()
    assert metrics.dead_letters_evicted["size"] > 0 and "age" not in metrics.dead_letters_evicted
    assert (
        f'citysense_ingest_dead_letters_evicted_total{{cause="size"}} {metrics.dead_letters_evicted["size"]}'
        in metrics.render()
    )
