"""The asyncio client: `AsyncClient`, the surface of `Client` over `grpc.aio`, for asyncio
applications (FastAPI, aiohttp...). Every call is a coroutine; reads and subscriptions are async
iterators, and subscriptions resume after a dropped connection like `Client`'s.

    from highwater_client import NewEvent
    from highwater_client.aio import AsyncClient

    async with AsyncClient("127.0.0.1:50051") as client:
        await client.append("cart-1", NewEvent("ProductAdded", {"sku": "apple", "quantity": 2}))
        async for event in client.read_stream("cart-1"):
            print(event.revision, event.json())

The rules for ids, retries, deadlines and errors are those of `Client` (docs/CLIENTS.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._proto.highwater.v1 import admin_pb2, admin_pb2_grpc, event_store_pb2, event_store_pb2_grpc
from .client import (
    _CHANNEL_OPTIONS,
    U64_MAX,
    CallRetry,
    ExpectedRevision,
    Pem,
    RetryPolicy,
    SystemMessageKind,
    _ChannelSettings,
    _check_snapshot_every,
    _direction,
    _fold_aggregate,
    _set_expected,
)
from .errors import Unavailable, from_rpc_error
from .models import (
    AppendResult,
    Checkpoint,
    HardDeleteResult,
    LoadedAggregate,
    NewEvent,
    ProjectionInfo,
    RebuildProgress,
    RecordedEvent,
    RetryResult,
    Snapshot,
    SubscriptionInfo,
    SystemMessage,
    encode_data,
)

log = logging.getLogger("highwater_client")

S = TypeVar("S")
T = TypeVar("T")


class AsyncClient:
    """A connection to one Highwater server, for asyncio; the options are `Client`'s."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        tls_ca: Optional[Pem] = None,
        tls_client_cert: Optional[Pem] = None,
        tls_client_key: Optional[Pem] = None,
        timeout: float = 30.0,
        retry: Optional[RetryPolicy] = None,
        call_retry: Optional[CallRetry] = None,
    ):
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.call_retry = call_retry or CallRetry()
        settings = _ChannelSettings.check(target, token, tls_ca, tls_client_cert, tls_client_key)
        self.tls = settings.credentials is not None
        if settings.credentials is not None:
            self.channel = grpc.aio.secure_channel(settings.address, settings.credentials, options=_CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(settings.address, options=_CHANNEL_OPTIONS)
        # Sent with every call (grpc.aio channels take no interceptors of the sync kind).
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (settings.authorization,) if settings.authorization is not None else ()
        )
        self.event_store = event_store_pb2_grpc.EventStoreServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any, retry: bool = True) -> T:
        """A unary call; `retry`: repeating it cannot change its outcome (see CallRetry)."""
        waits = self.call_retry.waits() if retry else iter(())
        while True:
            try:
                return await method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                wait = next(waits, None) if e.code() in self.call_retry.codes else None
                if wait is None:
                    raise from_rpc_error(e) from None
                log.debug("%s, retrying in %.3fs", e.code().name, wait)
                await asyncio.sleep(wait)

    async def _stream(self, open_call: Callable[[], Any], retry: bool = True) -> AsyncIterator[Any]:
        """The messages of a streamed call, opened again (with `retry`) after a retryable failure
        before the first message."""
        waits = self.call_retry.waits() if retry else iter(())
        while True:
            call = open_call()
            received = False
            try:
                async for message in call:
                    received = True
                    yield message
                return
            except grpc.RpcError as e:
                wait = None if received or e.code() not in self.call_retry.codes else next(waits, None)
                if wait is None:
                    raise from_rpc_error(e) from None
                await asyncio.sleep(wait)
            finally:
                call.cancel()

    # --- Health ---------------------------------------------------------------------------------

    async def health(self, service: str = "") -> str:
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Waits until the event store reports SERVING; raises Unavailable after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                if await self.health("highwater.v1.EventStoreService") == "SERVING":
                    return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = e
            await asyncio.sleep(0.1)
        raise Unavailable(f"server at {self.target} not ready after {timeout}s: {last}")

    # --- Writing and reading (as Client's) ------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Union[NewEvent, Iterable[NewEvent]],
        expected_revision: ExpectedRevision = "any",
    ) -> AppendResult:
        if isinstance(events, NewEvent):
            events = [events]
        request = event_store_pb2.AppendRequest(stream=stream, events=[e.to_proto() for e in events])
        _set_expected(request, expected_revision)
        r = await self._call(self.event_store.Append, request, retry=all(e.id for e in request.events))
        return AppendResult(r.first_revision, r.last_revision, r.first_position, r.last_position)

    async def delete_stream(self, stream: str, expected_revision: ExpectedRevision = "any") -> int:
        request = event_store_pb2.DeleteStreamRequest(stream=stream)
        _set_expected(request, expected_revision)
        return (await self._call(self.event_store.DeleteStream, request, retry=False)).deleted_revision

    async def hard_delete_stream(self, stream: str, expected_revision: ExpectedRevision = "any") -> HardDeleteResult:
        request = admin_pb2.HardDeleteStreamRequest(stream=stream)
        _set_expected(request, expected_revision)
        r = await self._call(self.admin.HardDeleteStream, request)
        return HardDeleteResult(r.deleted_revision, r.erased_events)

    async def read_stream(
        self,
        stream: str,
        from_revision: Optional[int] = None,
        backwards: bool = False,
        limit: Optional[int] = None,
        original: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        if from_revision is None:
            from_revision = U64_MAX if backwards else 0
        request = event_store_pb2.ReadStreamRequest(
            stream=stream,
            from_revision=from_revision,
            direction=_direction(backwards),
            max_count=limit or 0,
            original=original,
        )
        async for message in self._stream(lambda: self.event_store.ReadStream(request, metadata=self._metadata)):
            yield RecordedEvent.from_proto(message.event)

    async def read_all(
        self,
        after_position: Optional[int] = None,
        backwards: bool = False,
        limit: Optional[int] = None,
        original: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        if after_position is None:
            after_position = U64_MAX if backwards else 0
        request = event_store_pb2.ReadAllRequest(
            after_position=after_position, direction=_direction(backwards), max_count=limit or 0, original=original
        )
        async for message in self._stream(lambda: self.event_store.ReadAll(request, metadata=self._metadata)):
            yield RecordedEvent.from_proto(message.event)

    async def head_position(self) -> int:
        async for event in self.read_all(backwards=True, limit=1):
            return event.position
        return 0

    # --- Snapshots (as Client's) ----------------------------------------------------------------

    async def save_snapshot(self, stream: str, revision: int, type: str, data: Any, content_type: str = "") -> Snapshot:
        request = event_store_pb2.SaveSnapshotRequest(
            stream=stream, revision=revision, type=type, data=encode_data(data), content_type=content_type
        )
        return Snapshot.from_proto((await self._call(self.event_store.SaveSnapshot, request)).snapshot)

    async def read_from_snapshot(self, stream: str) -> Tuple[Optional[Snapshot], List[RecordedEvent]]:
        """The stream's latest snapshot (None if it has none) and the events after it."""
        request = event_store_pb2.ReadStreamRequest(stream=stream, from_latest_snapshot=True)
        snapshot: Optional[Snapshot] = None
        events: List[RecordedEvent] = []
        async for message in self._stream(lambda: self.event_store.ReadStream(request, metadata=self._metadata)):
            if message.HasField("snapshot"):
                snapshot = Snapshot.from_proto(message.snapshot)
            else:
                events.append(RecordedEvent.from_proto(message.event))
        return snapshot, events

    async def load_aggregate(
        self,
        stream: str,
        fold: Callable[[S, RecordedEvent], S],
        initial: S,
        snapshot_type: str,
        snapshot_every: Optional[int] = None,
        encode: Callable[[S], Any] = lambda state: state,
        decode: Callable[[Snapshot], S] = lambda snapshot: snapshot.json(),
    ) -> LoadedAggregate:
        _check_snapshot_every(snapshot_every)
        snapshot, events = await self.read_from_snapshot(stream)
        if snapshot is not None and snapshot.type != snapshot_type:
            snapshot = None
            events = [event async for event in self.read_stream(stream)]
        loaded = _fold_aggregate(stream, snapshot, events, fold, initial, decode, snapshot_every)
        if loaded.saved_snapshot:
            await self.save_snapshot(stream, loaded.revision, snapshot_type, encode(loaded.state))
        return loaded

    # --- Subscriptions (as Client's) ------------------------------------------------------------

    def subscribe_all(
        self,
        subscription: Optional[str] = None,
        *,
        after_position: Optional[int] = None,
        from_end: bool = False,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        checkpoint_interval: int = 0,
        checkpoints: bool = False,
        retry: Optional[RetryPolicy] = None,
        original: bool = False,
    ) -> "AsyncAllSubscription":
        if sum((subscription is not None, after_position is not None, from_end)) > 1:
            raise ValueError("give at most one of subscription, after_position and from_end")
        return AsyncAllSubscription(
            self,
            subscription=subscription,
            after_position=after_position,
            from_end=from_end,
            filter=event_store_pb2.Filter(stream_prefixes=list(stream_prefixes), event_types=list(event_types)),
            checkpoint_interval=checkpoint_interval,
            checkpoints=checkpoints,
            retry=retry or self.retry,
            original=original,
        )

    def subscribe_stream(
        self,
        stream: str,
        from_revision: int = 0,
        *,
        checkpoints: bool = False,
        retry: Optional[RetryPolicy] = None,
        original: bool = False,
    ) -> "AsyncStreamSubscription":
        return AsyncStreamSubscription(
            self, stream, from_revision, checkpoints=checkpoints, retry=retry or self.retry, original=original
        )

    async def save_checkpoint(self, subscription: str, position: int) -> int:
        request = event_store_pb2.SaveCheckpointRequest(subscription=subscription, position=position)
        return (await self._call(self.event_store.SaveCheckpoint, request)).position

    async def list_subscriptions(self) -> List[SubscriptionInfo]:
        r = await self._call(self.event_store.ListSubscriptions, event_store_pb2.ListSubscriptionsRequest())
        return [SubscriptionInfo(s.name, s.position, s.lag) for s in r.subscriptions]

    async def delete_subscription(self, subscription: str) -> None:
        request = event_store_pb2.DeleteSubscriptionRequest(subscription=subscription)
        await self._call(self.event_store.DeleteSubscription, request, retry=False)

    # --- Projections (as Client's) --------------------------------------------------------------

    async def rebuild(self, projection: str, in_place: bool = False) -> AsyncIterator[RebuildProgress]:
        strategy = admin_pb2.REBUILD_STRATEGY_IN_PLACE if in_place else admin_pb2.REBUILD_STRATEGY_BLUE_GREEN
        request = admin_pb2.AdminRebuildRequest(projection=projection, strategy=strategy)
        async for message in self._stream(lambda: self.admin.AdminRebuild(request, metadata=self._metadata), retry=False):
            yield RebuildProgress.from_proto(message.progress)

    async def get_projection(self, name: str) -> ProjectionInfo:
        request = admin_pb2.GetProjectionRequest(name=name)
        return ProjectionInfo.from_proto((await self._call(self.admin.GetProjection, request)).projection)

    async def list_projections(self) -> List[ProjectionInfo]:
        r = await self._call(self.admin.ListProjections, admin_pb2.ListProjectionsRequest())
        return [ProjectionInfo.from_proto(p) for p in r.projections]

    async def register_projection(
        self, toml: Optional[str] = None, *, definition: Optional[admin_pb2.ProjectionDefinition] = None
    ) -> ProjectionInfo:
        if (toml is None) == (definition is None):
            raise ValueError("give exactly one of toml and definition")
        request = (
            admin_pb2.RegisterProjectionRequest(toml=toml)
            if toml is not None
            else admin_pb2.RegisterProjectionRequest(definition=definition)
        )
        r = await self._call(self.admin.RegisterProjection, request, retry=False)
        return ProjectionInfo.from_proto(r.projection)

    async def register_upcaster(
        self, toml: Optional[str] = None, *, definition: Optional[admin_pb2.UpcasterDefinition] = None
    ) -> admin_pb2.UpcasterDefinition:
        if (toml is None) == (definition is None):
            raise ValueError("give exactly one of toml and definition")
        request = (
            admin_pb2.RegisterUpcasterRequest(toml=toml)
            if toml is not None
            else admin_pb2.RegisterUpcasterRequest(definition=definition)
        )
        r = await self._call(self.admin.RegisterUpcaster, request, retry=False)
        return r.upcaster

    async def list_upcasters(self) -> List[admin_pb2.RegisteredUpcaster]:
        r = await self._call(self.admin.ListUpcasters, admin_pb2.ListUpcastersRequest())
        return list(r.upcasters)

    async def delete_upcaster(self, name: str) -> None:
        await self._call(self.admin.DeleteUpcaster, admin_pb2.DeleteUpcasterRequest(name=name), retry=False)

    async def list_system_messages(
        self, projection: str = "", kind: SystemMessageKind = "", include_archived: bool = False, limit: int = 0
    ) -> List[SystemMessage]:
        request = admin_pb2.ListSystemMessagesRequest(
            projection=projection, kind=kind, include_archived=include_archived, limit=limit
        )
        r = await self._call(self.admin.ListSystemMessages, request)
        return [
            SystemMessage(m.id, m.projection, m.version, m.position, m.kind, m.reason, m.HasField("archived_at"))
            for m in r.messages
        ]

    async def retry_dead_letters(self, projection: str) -> RetryResult:
        request = admin_pb2.RetryDeadLettersRequest(projection=projection)
        r = await self._call(self.admin.RetryDeadLetters, request, retry=False)
        return RetryResult(r.applied, r.still_failing)


class _AsyncResumingSubscription:
    """An async iterator over a server stream of events that reconnects when the stream breaks
    (as Client's subscriptions). Subclasses say how to open the stream from the current state
    (`_open`) and keep that state as messages arrive (`_is_new`, `_advance`). close() (from any
    task) ends it; a cancelled wait (asyncio.wait_for's timeout) loses nothing."""

    def __init__(self, client: AsyncClient, checkpoints: bool, retry: RetryPolicy, original: bool = False):
        self._client = client
        self._original = original  # events as stored, not through the server's upcasters
        self._checkpoints = checkpoints
        self._retry = retry
        self._closed = False
        self._call: Any = None
        self.caught_up = False
        self.reconnects = 0
        self._iterator = self._run()

    def __aiter__(self) -> "_AsyncResumingSubscription":
        return self

    async def __anext__(self) -> Union[RecordedEvent, Checkpoint]:
        try:
            return await self._iterator.__anext__()
        except asyncio.CancelledError:
            if not self._closed:
                # A cancelled wait ended the generator: the next wait resumes from the state.
                self._iterator = self._run()
            raise

    async def __aenter__(self) -> "_AsyncResumingSubscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stops the subscription; an iteration in progress (in another task) ends cleanly."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        if not self._iterator.ag_running:
            await self._iterator.aclose()

    async def _prepare(self) -> None:
        """Runs before the first connection."""

    def _open(self) -> Any:
        raise NotImplementedError

    def _is_new(self, event: Any) -> bool:
        raise NotImplementedError

    def _advance(self, event: Any, position: int) -> None:
        raise NotImplementedError

    async def _run(self) -> AsyncIterator[Union[RecordedEvent, Checkpoint]]:
        await self._prepare()
        backoff = self._retry.initial_backoff
        failing_since: Optional[float] = None
        while not self._closed:
            error: Optional[grpc.RpcError] = None
            self._call = call = self._open()
            try:
                async for message in call:
                    failing_since, backoff = None, self._retry.initial_backoff
                    kind = message.WhichOneof("content")
                    if kind == "event":
                        if not self._is_new(message.event):
                            log.warning("dropped a repeated event at position %d", message.event.position)
                            continue
                        self._advance(message.event, message.event.position)
                        yield RecordedEvent.from_proto(message.event)
                    else:
                        position = getattr(message, kind).position
                        if kind != "checkpoint":
                            self.caught_up = kind == "caught_up"
                        self._advance(None, position)
                        if self._checkpoints:
                            yield Checkpoint(position, kind)
            except grpc.RpcError as e:
                if self._closed:
                    return
                if e.code() not in self._retry.codes:
                    raise from_rpc_error(e) from None
                error = e
            except asyncio.CancelledError:
                if self._closed:
                    return  # close() cancelled the call under this iteration
                raise
            finally:
                call.cancel()
            if self._closed:
                return
            self.caught_up = False
            now = time.monotonic()
            failing_since = failing_since or now
            limit = self._retry.give_up_after
            if limit is not None and now - failing_since > limit:
                if error is not None:
                    raise from_rpc_error(error) from None
                raise Unavailable("the server kept closing the subscription")
            log.info("subscription interrupted (%s); reconnecting", error.code() if error else "closed")
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * self._retry.multiplier, self._retry.max_backoff)
            self.reconnects += 1


class AsyncAllSubscription(_AsyncResumingSubscription):
    """SubscribeAll as an async iterator (as AllSubscription). `position` is the last position
    received: the value to save as a checkpoint once processed."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        subscription: Optional[str],
        after_position: Optional[int],
        from_end: bool,
        filter: event_store_pb2.Filter,
        checkpoint_interval: int,
        checkpoints: bool,
        retry: RetryPolicy,
        original: bool = False,
    ):
        self.subscription = subscription
        self.position: Optional[int] = after_position
        self._from_end = from_end
        self._started = False
        self._filter = filter
        self._checkpoint_interval = checkpoint_interval
        super().__init__(client, checkpoints, retry, original)

    async def _prepare(self) -> None:
        if self._started:
            return
        self._started = True
        if self._from_end:
            # Pinned to a position now, so that a reconnect cannot skip what committed since.
            self.position = await self._client.head_position()
        elif self.subscription is None and self.position is None:
            self.position = 0

    def _open(self) -> Any:
        request = event_store_pb2.SubscribeAllRequest(
            filter=self._filter, checkpoint_interval=self._checkpoint_interval, original=self._original
        )
        if self.position is None:
            request.subscription = self.subscription or ""
        else:
            request.after_position = self.position
        return self._client.event_store.SubscribeAll(request, metadata=self._client._metadata)

    def _is_new(self, event: Any) -> bool:
        return self.position is None or event.position > self.position

    def _advance(self, event: Any, position: int) -> None:
        if self.position is None or position > self.position:
            self.position = position


class AsyncStreamSubscription(_AsyncResumingSubscription):
    """SubscribeStream as an async iterator (as StreamSubscription). `next_revision` is the
    revision it will deliver next."""

    def __init__(
        self,
        client: AsyncClient,
        stream: str,
        from_revision: int,
        *,
        checkpoints: bool,
        retry: RetryPolicy,
        original: bool = False,
    ):
        self.stream = stream
        self.next_revision = from_revision
        super().__init__(client, checkpoints, retry, original)

    def _open(self) -> Any:
        request = event_store_pb2.SubscribeStreamRequest(
            stream=self.stream, from_revision=self.next_revision, original=self._original
        )
        return self._client.event_store.SubscribeStream(request, metadata=self._client._metadata)

    def _is_new(self, event: Any) -> bool:
        return bool(event.revision >= self.next_revision)

    def _advance(self, event: Any, position: int) -> None:
        if event is not None:
            self.next_revision = event.revision + 1
