import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import event_store_pb2 as _event_store_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProjectionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROJECTION_MODE_UNSPECIFIED: _ClassVar[ProjectionMode]
    PROJECTION_MODE_INLINE: _ClassVar[ProjectionMode]
    PROJECTION_MODE_ASYNC: _ClassVar[ProjectionMode]

class OnError(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_ERROR_UNSPECIFIED: _ClassVar[OnError]
    ON_ERROR_FAIL: _ClassVar[OnError]
    ON_ERROR_SKIP: _ClassVar[OnError]

class RebuildStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REBUILD_STRATEGY_UNSPECIFIED: _ClassVar[RebuildStrategy]
    REBUILD_STRATEGY_BLUE_GREEN: _ClassVar[RebuildStrategy]
    REBUILD_STRATEGY_IN_PLACE: _ClassVar[RebuildStrategy]
PROJECTION_MODE_UNSPECIFIED: ProjectionMode
PROJECTION_MODE_INLINE: ProjectionMode
PROJECTION_MODE_ASYNC: ProjectionMode
ON_ERROR_UNSPECIFIED: OnError
ON_ERROR_FAIL: OnError
ON_ERROR_SKIP: OnError
REBUILD_STRATEGY_UNSPECIFIED: RebuildStrategy
REBUILD_STRATEGY_BLUE_GREEN: RebuildStrategy
REBUILD_STRATEGY_IN_PLACE: RebuildStrategy

class UpcasterDefinition(_message.Message):
    __slots__ = ("name", "event_type", "from_version", "to_type", "to_version", "data", "metadata")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    event_type: str
    from_version: str
    to_type: str
    to_version: str
    data: str
    metadata: str
    def __init__(self, name: _Optional[str] = ..., event_type: _Optional[str] = ..., from_version: _Optional[str] = ..., to_type: _Optional[str] = ..., to_version: _Optional[str] = ..., data: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class RegisterUpcasterRequest(_message.Message):
    __slots__ = ("definition", "toml")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    TOML_FIELD_NUMBER: _ClassVar[int]
    definition: UpcasterDefinition
    toml: str
    def __init__(self, definition: _Optional[_Union[UpcasterDefinition, _Mapping]] = ..., toml: _Optional[str] = ...) -> None: ...

class RegisterUpcasterResponse(_message.Message):
    __slots__ = ("upcaster",)
    UPCASTER_FIELD_NUMBER: _ClassVar[int]
    upcaster: UpcasterDefinition
    def __init__(self, upcaster: _Optional[_Union[UpcasterDefinition, _Mapping]] = ...) -> None: ...

class ListUpcastersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUpcastersResponse(_message.Message):
    __slots__ = ("upcasters",)
    UPCASTERS_FIELD_NUMBER: _ClassVar[int]
    upcasters: _containers.RepeatedCompositeFieldContainer[RegisteredUpcaster]
    def __init__(self, upcasters: _Optional[_Iterable[_Union[RegisteredUpcaster, _Mapping]]] = ...) -> None: ...

class RegisteredUpcaster(_message.Message):
    __slots__ = ("definition", "origin")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    definition: UpcasterDefinition
    origin: str
    def __init__(self, definition: _Optional[_Union[UpcasterDefinition, _Mapping]] = ..., origin: _Optional[str] = ...) -> None: ...

class DeleteUpcasterRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteUpcasterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProjectionDefinition(_message.Message):
    __slots__ = ("name", "version", "mode", "on_error", "setup", "handlers")
    class HandlersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ON_ERROR_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    mode: ProjectionMode
    on_error: OnError
    setup: str
    handlers: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., mode: _Optional[_Union[ProjectionMode, str]] = ..., on_error: _Optional[_Union[OnError, str]] = ..., setup: _Optional[str] = ..., handlers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterProjectionRequest(_message.Message):
    __slots__ = ("definition", "toml")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    TOML_FIELD_NUMBER: _ClassVar[int]
    definition: ProjectionDefinition
    toml: str
    def __init__(self, definition: _Optional[_Union[ProjectionDefinition, _Mapping]] = ..., toml: _Optional[str] = ...) -> None: ...

class RegisterProjectionResponse(_message.Message):
    __slots__ = ("projection",)
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    projection: ProjectionInfo
    def __init__(self, projection: _Optional[_Union[ProjectionInfo, _Mapping]] = ...) -> None: ...

class ListProjectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProjectionsResponse(_message.Message):
    __slots__ = ("projections",)
    PROJECTIONS_FIELD_NUMBER: _ClassVar[int]
    projections: _containers.RepeatedCompositeFieldContainer[ProjectionInfo]
    def __init__(self, projections: _Optional[_Iterable[_Union[ProjectionInfo, _Mapping]]] = ...) -> None: ...

class GetProjectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetProjectionResponse(_message.Message):
    __slots__ = ("projection",)
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    projection: ProjectionInfo
    def __init__(self, projection: _Optional[_Union[ProjectionInfo, _Mapping]] = ...) -> None: ...

class ProjectionInfo(_message.Message):
    __slots__ = ("name", "mode", "active_version", "building_version", "status", "applied_position", "head", "lag_events", "lag_seconds", "rebuild_owner", "heartbeat_at", "pending_skips", "archived_skips", "dead_letters", "versions", "definition", "progress")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_POSITION_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LAG_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REBUILD_OWNER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    PENDING_SKIPS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_SKIPS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: ProjectionMode
    active_version: int
    building_version: int
    status: str
    applied_position: int
    head: int
    lag_events: int
    lag_seconds: float
    rebuild_owner: str
    heartbeat_at: _timestamp_pb2.Timestamp
    pending_skips: int
    archived_skips: int
    dead_letters: int
    versions: _containers.RepeatedCompositeFieldContainer[ProjectionVersion]
    definition: ProjectionDefinition
    progress: RebuildProgress
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[_Union[ProjectionMode, str]] = ..., active_version: _Optional[int] = ..., building_version: _Optional[int] = ..., status: _Optional[str] = ..., applied_position: _Optional[int] = ..., head: _Optional[int] = ..., lag_events: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., rebuild_owner: _Optional[str] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pending_skips: _Optional[int] = ..., archived_skips: _Optional[int] = ..., dead_letters: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ProjectionVersion, _Mapping]]] = ..., definition: _Optional[_Union[ProjectionDefinition, _Mapping]] = ..., progress: _Optional[_Union[RebuildProgress, _Mapping]] = ...) -> None: ...

class ProjectionVersion(_message.Message):
    __slots__ = ("version", "status", "applied_position", "rebuild_owner", "heartbeat_at", "events_per_second", "last_error", "table")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_POSITION_FIELD_NUMBER: _ClassVar[int]
    REBUILD_OWNER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    version: int
    status: str
    applied_position: int
    rebuild_owner: str
    heartbeat_at: _timestamp_pb2.Timestamp
    events_per_second: float
    last_error: str
    table: str
    def __init__(self, version: _Optional[int] = ..., status: _Optional[str] = ..., applied_position: _Optional[int] = ..., rebuild_owner: _Optional[str] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., events_per_second: _Optional[float] = ..., last_error: _Optional[str] = ..., table: _Optional[str] = ...) -> None: ...

class AdminRebuildRequest(_message.Message):
    __slots__ = ("projection", "strategy")
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    projection: str
    strategy: RebuildStrategy
    def __init__(self, projection: _Optional[str] = ..., strategy: _Optional[_Union[RebuildStrategy, str]] = ...) -> None: ...

class RebuildProgress(_message.Message):
    __slots__ = ("phase", "version", "position", "head", "events_per_second", "skips_replayed", "node", "error")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[RebuildProgress.Phase]
        PHASE_STARTING: _ClassVar[RebuildProgress.Phase]
        PHASE_BACKFILLING: _ClassVar[RebuildProgress.Phase]
        PHASE_CATCHING_UP: _ClassVar[RebuildProgress.Phase]
        PHASE_CUTTING_OVER: _ClassVar[RebuildProgress.Phase]
        PHASE_REPLAYING_SKIPS: _ClassVar[RebuildProgress.Phase]
        PHASE_DONE: _ClassVar[RebuildProgress.Phase]
        PHASE_FAILED: _ClassVar[RebuildProgress.Phase]
    PHASE_UNSPECIFIED: RebuildProgress.Phase
    PHASE_STARTING: RebuildProgress.Phase
    PHASE_BACKFILLING: RebuildProgress.Phase
    PHASE_CATCHING_UP: RebuildProgress.Phase
    PHASE_CUTTING_OVER: RebuildProgress.Phase
    PHASE_REPLAYING_SKIPS: RebuildProgress.Phase
    PHASE_DONE: RebuildProgress.Phase
    PHASE_FAILED: RebuildProgress.Phase
    PHASE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SKIPS_REPLAYED_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    phase: RebuildProgress.Phase
    version: int
    position: int
    head: int
    events_per_second: float
    skips_replayed: int
    node: str
    error: str
    def __init__(self, phase: _Optional[_Union[RebuildProgress.Phase, str]] = ..., version: _Optional[int] = ..., position: _Optional[int] = ..., head: _Optional[int] = ..., events_per_second: _Optional[float] = ..., skips_replayed: _Optional[int] = ..., node: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AdminRebuildResponse(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: RebuildProgress
    def __init__(self, progress: _Optional[_Union[RebuildProgress, _Mapping]] = ...) -> None: ...

class ListSystemMessagesRequest(_message.Message):
    __slots__ = ("projection", "kind", "include_archived", "limit")
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    projection: str
    kind: str
    include_archived: bool
    limit: int
    def __init__(self, projection: _Optional[str] = ..., kind: _Optional[str] = ..., include_archived: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ListSystemMessagesResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[SystemMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[SystemMessage, _Mapping]]] = ...) -> None: ...

class SystemMessage(_message.Message):
    __slots__ = ("id", "projection", "version", "position", "kind", "reason", "recorded_at", "archived_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    projection: str
    version: int
    position: int
    kind: str
    reason: str
    recorded_at: _timestamp_pb2.Timestamp
    archived_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., projection: _Optional[str] = ..., version: _Optional[int] = ..., position: _Optional[int] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., archived_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RetryDeadLettersRequest(_message.Message):
    __slots__ = ("projection",)
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    projection: str
    def __init__(self, projection: _Optional[str] = ...) -> None: ...

class RetryDeadLettersResponse(_message.Message):
    __slots__ = ("applied", "still_failing")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    STILL_FAILING_FIELD_NUMBER: _ClassVar[int]
    applied: int
    still_failing: int
    def __init__(self, applied: _Optional[int] = ..., still_failing: _Optional[int] = ...) -> None: ...

class HardDeleteStreamRequest(_message.Message):
    __slots__ = ("stream", "revision", "state")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    revision: int
    state: _event_store_pb2.ExpectedState
    def __init__(self, stream: _Optional[str] = ..., revision: _Optional[int] = ..., state: _Optional[_Union[_event_store_pb2.ExpectedState, str]] = ...) -> None: ...

class HardDeleteStreamResponse(_message.Message):
    __slots__ = ("deleted_revision", "erased_events")
    DELETED_REVISION_FIELD_NUMBER: _ClassVar[int]
    ERASED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    deleted_revision: int
    erased_events: int
    def __init__(self, deleted_revision: _Optional[int] = ..., erased_events: _Optional[int] = ...) -> None: ...
