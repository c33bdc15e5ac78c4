import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExpectedState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPECTED_STATE_UNSPECIFIED: _ClassVar[ExpectedState]
    EXPECTED_STATE_ANY: _ClassVar[ExpectedState]
    EXPECTED_STATE_NO_STREAM: _ClassVar[ExpectedState]
    EXPECTED_STATE_STREAM_EXISTS: _ClassVar[ExpectedState]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_FORWARDS: _ClassVar[Direction]
    DIRECTION_BACKWARDS: _ClassVar[Direction]
EXPECTED_STATE_UNSPECIFIED: ExpectedState
EXPECTED_STATE_ANY: ExpectedState
EXPECTED_STATE_NO_STREAM: ExpectedState
EXPECTED_STATE_STREAM_EXISTS: ExpectedState
DIRECTION_UNSPECIFIED: Direction
DIRECTION_FORWARDS: Direction
DIRECTION_BACKWARDS: Direction

class ProposedEvent(_message.Message):
    __slots__ = ("id", "type", "data", "content_type", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    data: bytes
    content_type: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("stream", "revision", "state", "events")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    stream: str
    revision: int
    state: ExpectedState
    events: _containers.RepeatedCompositeFieldContainer[ProposedEvent]
    def __init__(self, stream: _Optional[str] = ..., revision: _Optional[int] = ..., state: _Optional[_Union[ExpectedState, str]] = ..., events: _Optional[_Iterable[_Union[ProposedEvent, _Mapping]]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("first_revision", "last_revision", "first_position", "last_position")
    FIRST_REVISION_FIELD_NUMBER: _ClassVar[int]
    LAST_REVISION_FIELD_NUMBER: _ClassVar[int]
    FIRST_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    first_revision: int
    last_revision: int
    first_position: int
    last_position: int
    def __init__(self, first_revision: _Optional[int] = ..., last_revision: _Optional[int] = ..., first_position: _Optional[int] = ..., last_position: _Optional[int] = ...) -> None: ...

class ReadStreamRequest(_message.Message):
    __slots__ = ("stream", "from_revision", "direction", "max_count", "from_latest_snapshot", "original")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    FROM_LATEST_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    stream: str
    from_revision: int
    direction: Direction
    max_count: int
    from_latest_snapshot: bool
    original: bool
    def __init__(self, stream: _Optional[str] = ..., from_revision: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., max_count: _Optional[int] = ..., from_latest_snapshot: _Optional[bool] = ..., original: _Optional[bool] = ...) -> None: ...

class ReadAllRequest(_message.Message):
    __slots__ = ("after_position", "direction", "max_count", "original")
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    after_position: int
    direction: Direction
    max_count: int
    original: bool
    def __init__(self, after_position: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., max_count: _Optional[int] = ..., original: _Optional[bool] = ...) -> None: ...

class ReadStreamResponse(_message.Message):
    __slots__ = ("event", "snapshot")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    event: RecordedEvent
    snapshot: Snapshot
    def __init__(self, event: _Optional[_Union[RecordedEvent, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("stream", "revision", "type", "data", "content_type", "saved_at")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SAVED_AT_FIELD_NUMBER: _ClassVar[int]
    stream: str
    revision: int
    type: str
    data: bytes
    content_type: str
    saved_at: _timestamp_pb2.Timestamp
    def __init__(self, stream: _Optional[str] = ..., revision: _Optional[int] = ..., type: _Optional[str] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., saved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SaveSnapshotRequest(_message.Message):
    __slots__ = ("stream", "revision", "type", "data", "content_type")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    revision: int
    type: str
    data: bytes
    content_type: str
    def __init__(self, stream: _Optional[str] = ..., revision: _Optional[int] = ..., type: _Optional[str] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class SaveSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class ReadAllResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: RecordedEvent
    def __init__(self, event: _Optional[_Union[RecordedEvent, _Mapping]] = ...) -> None: ...

class RecordedEvent(_message.Message):
    __slots__ = ("id", "type", "stream", "revision", "position", "data", "content_type", "metadata", "recorded_at")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    stream: str
    revision: int
    position: int
    data: bytes
    content_type: str
    metadata: _containers.ScalarMap[str, str]
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., stream: _Optional[str] = ..., revision: _Optional[int] = ..., position: _Optional[int] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("stream_prefixes", "event_types")
    STREAM_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    stream_prefixes: _containers.RepeatedScalarFieldContainer[str]
    event_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, stream_prefixes: _Optional[_Iterable[str]] = ..., event_types: _Optional[_Iterable[str]] = ...) -> None: ...

class SubscribeAllRequest(_message.Message):
    __slots__ = ("after_position", "end", "subscription", "filter", "checkpoint_interval", "original")
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    after_position: int
    end: _empty_pb2.Empty
    subscription: str
    filter: Filter
    checkpoint_interval: int
    original: bool
    def __init__(self, after_position: _Optional[int] = ..., end: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., subscription: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., checkpoint_interval: _Optional[int] = ..., original: _Optional[bool] = ...) -> None: ...

class SubscribeStreamRequest(_message.Message):
    __slots__ = ("stream", "from_revision", "end", "original")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    stream: str
    from_revision: int
    end: _empty_pb2.Empty
    original: bool
    def __init__(self, stream: _Optional[str] = ..., from_revision: _Optional[int] = ..., end: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., original: _Optional[bool] = ...) -> None: ...

class SubscribeAllResponse(_message.Message):
    __slots__ = ("event", "checkpoint", "caught_up", "fell_behind")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    FELL_BEHIND_FIELD_NUMBER: _ClassVar[int]
    event: RecordedEvent
    checkpoint: Checkpoint
    caught_up: CaughtUp
    fell_behind: FellBehind
    def __init__(self, event: _Optional[_Union[RecordedEvent, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., caught_up: _Optional[_Union[CaughtUp, _Mapping]] = ..., fell_behind: _Optional[_Union[FellBehind, _Mapping]] = ...) -> None: ...

class SubscribeStreamResponse(_message.Message):
    __slots__ = ("event", "checkpoint", "caught_up", "fell_behind")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    FELL_BEHIND_FIELD_NUMBER: _ClassVar[int]
    event: RecordedEvent
    checkpoint: Checkpoint
    caught_up: CaughtUp
    fell_behind: FellBehind
    def __init__(self, event: _Optional[_Union[RecordedEvent, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., caught_up: _Optional[_Union[CaughtUp, _Mapping]] = ..., fell_behind: _Optional[_Union[FellBehind, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class CaughtUp(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class FellBehind(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ("subscription", "position")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    position: int
    def __init__(self, subscription: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class ListSubscriptionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSubscriptionsResponse(_message.Message):
    __slots__ = ("subscriptions",)
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[SubscriptionInfo]
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[SubscriptionInfo, _Mapping]]] = ...) -> None: ...

class SubscriptionInfo(_message.Message):
    __slots__ = ("name", "position", "lag", "updated_at", "lag_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    position: int
    lag: int
    updated_at: _timestamp_pb2.Timestamp
    lag_seconds: float
    def __init__(self, name: _Optional[str] = ..., position: _Optional[int] = ..., lag: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lag_seconds: _Optional[float] = ...) -> None: ...

class DeleteSubscriptionRequest(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    def __init__(self, subscription: _Optional[str] = ...) -> None: ...

class DeleteSubscriptionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteStreamRequest(_message.Message):
    __slots__ = ("stream", "revision", "state")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    revision: int
    state: ExpectedState
    def __init__(self, stream: _Optional[str] = ..., revision: _Optional[int] = ..., state: _Optional[_Union[ExpectedState, str]] = ...) -> None: ...

class DeleteStreamResponse(_message.Message):
    __slots__ = ("deleted_revision",)
    DELETED_REVISION_FIELD_NUMBER: _ClassVar[int]
    deleted_revision: int
    def __init__(self, deleted_revision: _Optional[int] = ...) -> None: ...
