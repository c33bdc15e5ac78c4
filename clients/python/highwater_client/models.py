"""Plain Python values handed to and returned by the client, instead of protobuf messages."""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ._proto.highwater.v1 import admin_pb2, event_store_pb2


def encode_data(data: Any) -> bytes:
    """Bytes as they are; anything else as compact JSON."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return json.dumps(data, separators=(",", ":")).encode()


@dataclass
class NewEvent:
    """An event to append.

    `data` is stored byte for byte when it is bytes; anything else is encoded as JSON. The id is
    chosen here (a random UUID) rather than by the server, so that appending the same NewEvent
    objects again after a timeout is recognised by the server as a retry and writes nothing.
    """

    type: str
    data: Any = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    content_type: str = ""  # empty: application/json (the server checks that data is JSON)
    metadata: Dict[str, str] = field(default_factory=dict)

    def to_proto(self) -> event_store_pb2.ProposedEvent:
        return event_store_pb2.ProposedEvent(
            id=self.id,
            type=self.type,
            data=encode_data(self.data),
            content_type=self.content_type,
            metadata=self.metadata,
        )


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: `revision` within its stream (from 0), `position` in the log (from 1)."""

    id: str
    type: str
    stream: str
    revision: int
    position: int
    data: bytes
    content_type: str
    metadata: Dict[str, str]
    recorded_at: datetime.datetime

    def json(self) -> Any:
        """The data decoded as JSON."""
        return json.loads(self.data)

    @classmethod
    def from_proto(cls, e: event_store_pb2.RecordedEvent) -> "RecordedEvent":
        return cls(
            id=e.id,
            type=e.type,
            stream=e.stream,
            revision=e.revision,
            position=e.position,
            data=e.data,
            content_type=e.content_type,
            metadata=dict(e.metadata),
            recorded_at=e.recorded_at.ToDatetime(tzinfo=datetime.timezone.utc),
        )


@dataclass(frozen=True)
class Snapshot:
    """A stream's state as of `revision` (that event included), saved by a client."""

    stream: str
    revision: int
    type: str
    data: bytes
    content_type: str
    saved_at: datetime.datetime

    def json(self) -> Any:
        """The data decoded as JSON."""
        return json.loads(self.data)

    @classmethod
    def from_proto(cls, s: event_store_pb2.Snapshot) -> "Snapshot":
        return cls(
            stream=s.stream,
            revision=s.revision,
            type=s.type,
            data=s.data,
            content_type=s.content_type,
            saved_at=s.saved_at.ToDatetime(tzinfo=datetime.timezone.utc),
        )


@dataclass(frozen=True)
class LoadedAggregate:
    """What `Client.load_aggregate` folded.

    `state` is the fold of every event of the stream up to `revision`, its last; it started from
    the snapshot at `snapshot_revision` (None: from the initial state) and folded `events_folded`
    events after it; `saved_snapshot` says whether the load saved a new snapshot of `state`.
    """

    state: Any
    revision: int
    snapshot_revision: Optional[int]
    events_folded: int
    saved_snapshot: bool


@dataclass(frozen=True)
class AppendResult:
    """Where appended events landed: revisions in their stream, positions in the log."""

    first_revision: int
    last_revision: int
    first_position: int
    last_position: int


@dataclass(frozen=True)
class HardDeleteResult:
    """What a hard delete erased: the stream's last revision and how many events left the log."""

    deleted_revision: int
    erased_events: int


@dataclass(frozen=True)
class Checkpoint:
    """A subscription's "everything up to `position` was sent or filtered out".

    `kind` is the server message it came from: "checkpoint", "caught_up" (what follows is live)
    or "fell_behind" (the subscriber is reading history again). Subscriptions yield these only
    when asked to (`checkpoints=True`).
    """

    position: int
    kind: str


@dataclass(frozen=True)
class SubscriptionInfo:
    """A durable subscription's stored checkpoint and how many events were committed after it."""

    name: str
    position: int
    lag: int


class Phase(enum.IntEnum):
    """Rebuild phases, with the values of RebuildProgress.Phase."""

    UNSPECIFIED = 0
    STARTING = 1
    BACKFILLING = 2
    CATCHING_UP = 3
    CUTTING_OVER = 4
    REPLAYING_SKIPS = 5
    DONE = 6
    FAILED = 7


@dataclass(frozen=True)
class RebuildProgress:
    """One progress report of a rebuild; `error` is set when the phase is FAILED."""

    phase: Phase
    version: int
    position: int
    head: int
    events_per_second: float
    skips_replayed: int
    node: str
    error: str

    @classmethod
    def from_proto(cls, p: admin_pb2.RebuildProgress) -> "RebuildProgress":
        return cls(
            phase=Phase(p.phase),
            version=p.version,
            position=p.position,
            head=p.head,
            events_per_second=p.events_per_second,
            skips_replayed=p.skips_replayed,
            node=p.node,
            error=p.error,
        )


@dataclass(frozen=True)
class ProjectionInfo:
    """The main facts about a projection; `raw` is the full ProjectionInfo message."""

    name: str
    mode: str  # "inline" or "async"
    status: str
    active_version: int
    building_version: int
    applied_position: int
    head: int
    lag_events: int
    dead_letters: int
    raw: admin_pb2.ProjectionInfo

    @classmethod
    def from_proto(cls, p: admin_pb2.ProjectionInfo) -> "ProjectionInfo":
        return cls(
            name=p.name,
            mode="async" if p.mode == admin_pb2.PROJECTION_MODE_ASYNC else "inline",
            status=p.status,
            active_version=p.active_version,
            building_version=p.building_version,
            applied_position=p.applied_position,
            head=p.head,
            lag_events=p.lag_events,
            dead_letters=p.dead_letters,
            raw=p,
        )


@dataclass(frozen=True)
class SystemMessage:
    """A skipped event or a dead letter of a projection."""

    id: int
    projection: str
    version: int
    position: int
    kind: str  # "skip" or "dead_letter"
    reason: str
    archived: bool


@dataclass(frozen=True)
class RetryResult:
    """The outcome of retrying a projection's dead letters."""

    applied: int
    still_failing: int
