"""What the simulated fleet did: its counters and, when recorded, each uplink's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulators.coap_client import EndpointCounters


@dataclass(frozen=True, slots=True)
class UplinkOutcome:
    """How one uplink ended (kept only when :class:`Counters` records)."""

    device: str  #: the id it was sent under
    t: int  #: its reading time, epoch ms
    fault: str | None  #: the payload or device fault injected into it
    outcome: str  #: "2.04", "4.00", ..., "timeout", "reset", "abandoned"
    transmissions: int
    content_format: int
    values: dict[str, float | bool] | None = None  #: what the uplink carried


@dataclass(slots=True)
class Counters:
    """What the fleet did; safe to read from the event loop's thread at any time."""

    record: bool = False  #: keep an :class:`UplinkOutcome` per uplink
    devices: int = 0
    sent: int = 0  #: uplinks sent (first transmission)
    acknowledged: int = 0  #: answered 2.04
    rejected: dict[str, int] = field(default_factory=dict)  #: other answers, by code
    resets: int = 0
    timeouts: int = 0
    abandoned: int = 0  #: still open at shutdown
    queued: int = 0  #: uplinks that waited on a device (busy or outage)
    queue_dropped: int = 0  #: uplinks a full device queue dropped
    unsent: int = 0  #: uplinks still queued at shutdown
    downlinks: int = 0  #: commands obeyed
    downlinks_ignored: int = 0  #: commands not understood
    injected: dict[str, int] = field(default_factory=dict)  #: payload faults, by name
    fired: int = 0  #: report times reached (sent or queued)
    late_total_s: float = 0.0  #: sum over report times of how late the scheduler reached them
    late_max_s: float = 0.0
    endpoint: EndpointCounters = field(default_factory=EndpointCounters)
    outcomes: list[UplinkOutcome] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return (
            self.acknowledged
            + sum(self.rejected.values())
            + self.resets
            + self.timeouts
            + self.abandoned
        )

    @property
    def in_flight(self) -> int:
        return self.sent - self.finished

    def as_dict(self) -> dict[str, object]:
        e = self.endpoint
        return {
            "devices": self.devices,
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "rejected": dict(sorted(self.rejected.items())),
            "resets": self.resets,
            "timeouts": self.timeouts,
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "queue_dropped": self.queue_dropped,
            "unsent": self.unsent,
            "downlinks": self.downlinks,
            "downlinks_ignored": self.downlinks_ignored,
            "injected": dict(sorted(self.injected.items())),
            "late_mean_s": self.late_total_s / self.fired if self.fired else 0.0,
            "late_max_s": self.late_max_s,
            "datagrams": e.datagrams_sent,
            "retransmissions": e.retransmissions,
            "lost": e.lost_out + e.lost_in,
            "duplicated": e.duplicated,
            "stray_answers": e.stray,
            "separate_answers": e.separate,
        }

    def summary(self) -> str:
        rejected = " ".join(f"{c}:{n}" for c, n in sorted(self.rejected.items())) or "-"
        return (
            f"devices {self.devices}  sent {self.sent}  acknowledged {self.acknowledged}  "
            f"rejected {rejected}  retransmissions {self.endpoint.retransmissions}  "
            f"timeouts {self.timeouts}  in flight {self.in_flight}  queued {self.queued}  "
            f"downlinks {self.downlinks}"
        )
