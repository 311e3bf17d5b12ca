"""The ingestor's own counters, rendered by :mod:`citysense.prometheus`.

Counters only grow; gauges are read when scraped. Single-threaded: updated and read on the
event loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from citysense import prometheus
from citysense.prometheus import LATENCY_BUCKETS


class IngestMetrics:
    """Counters of one ingestor process."""

    def __init__(self) -> None:
        self.messages = 0
        self.readings_written = 0
        self.readings_rewritten = 0
        self.points_written = 0
        self.writes = 0
        self.retries = 0
        self.repeats_skipped = 0
        self.dead_letters: Counter[str] = Counter()
        self.dead_letters_evicted: Counter[str] = Counter()
        self.latency = prometheus.Histogram(LATENCY_BUCKETS)
        self.seq_gaps: Callable[[], int] = lambda: 0
        self.seq_repeats: Callable[[], int] = lambda: 0
        self.in_flight: Callable[[], int] = lambda: 0

    def observe_write(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def render(self) -> str:
        """The Prometheus text exposition of every counter."""
        c, g = prometheus.counter, prometheus.gauge
        return prometheus.render(
            [
                c("citysense_ingest_messages_total", "MQTT messages received", self.messages),
                c(
                    "citysense_ingest_readings_written_total",
                    "distinct readings stored (a re-sent batch is counted once)",
                    self.readings_written,
                ),
                c(
                    "citysense_ingest_readings_rewritten_total",
                    "readings of a re-sent batch written again while the first copy was being "
                    "written (stored once: same keys)",
                    self.readings_rewritten,
                ),
                c("citysense_ingest_points_written_total", "points stored", self.points_written),
                c("citysense_ingest_writes_total", "storage writes", self.writes),
                c("citysense_ingest_write_retries_total", "storage writes retried", self.retries),
                c(
                    "citysense_ingest_repeats_skipped_total",
                    "re-sent batches already stored, not written again",
                    self.repeats_skipped,
                ),
                c("citysense_ingest_seq_gaps_total", "missing seq", self.seq_gaps()),
                c("citysense_ingest_seq_repeats_total", "repeated seq", self.seq_repeats()),
                g(
                    "citysense_ingest_in_flight_messages",
                    "messages received and not yet acknowledged",
                    self.in_flight(),
                ),
                c(
                    "citysense_ingest_dead_letters_total",
                    "dead letters kept, by reason",
                    {(("reason", r),): n for r, n in self.dead_letters.items()},
                ),
                c(
                    "citysense_ingest_dead_letters_evicted_total",
                    "dead letters evicted by the store's bounds, by cause (age, size)",
                    # a copy: evictions are counted in the dead-letter store's thread
                    {(("cause", r),): n for r, n in dict(self.dead_letters_evicted).items()},
                ),
                prometheus.histogram(
                    "citysense_ingest_write_seconds", "storage write latency", self.latency
                ),
            ]
        )
