"""The hand-written layer over the generated stubs: `Client` and its resuming subscriptions."""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Literal, Optional, Sequence, Tuple, TypeVar, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._proto.highwater.v1 import admin_pb2, admin_pb2_grpc, event_store_pb2, event_store_pb2_grpc
from .errors import HighwaterError, NotFound, Unavailable, from_rpc_error
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

# The protocol's "from the end" for backwards reads.
U64_MAX = 2**64 - 1

#: "any" (no check), "no-stream", "exists", or the revision the stream's last event must have.
ExpectedRevision = Union[int, Literal["any", "no-stream", "exists"]]
#: The kinds of system message: skipped events awaiting replay, and dead letters ("": both).
SystemMessageKind = Literal["", "skip", "dead_letter"]
S = TypeVar("S")
_EXPECTED_STATES = {
    "any": event_store_pb2.EXPECTED_STATE_ANY,
    "no-stream": event_store_pb2.EXPECTED_STATE_NO_STREAM,
    "exists": event_store_pb2.EXPECTED_STATE_STREAM_EXISTS,
}

# Short reconnect backoff in the channel itself: gRPC's default grows to two minutes, which would
# keep a resuming subscription waiting long after a restarted server is back.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass
class RetryPolicy:
    """How a subscription reconnects after its stream breaks.

    Waits start at `initial_backoff` seconds and grow by `multiplier` up to `max_backoff` (each
    with random jitter). After `give_up_after` seconds without receiving anything the last error
    is raised (None: retry forever). Only errors with one of `codes` are retried; a stream that
    ends without an error (the server closed it) is retried too, as a subscription never ends
    on its own.
    """

    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    give_up_after: Optional[float] = 60.0
    codes: Sequence[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class CallRetry:
    """How calls that are safe to repeat are retried (docs/CLIENTS.md, "Retries").

    A call that fails with one of `codes` (the server was unreachable, or the deadline passed) is
    made again, up to `attempts` calls in all, after waits that start at `initial_backoff`
    seconds and grow by `multiplier` up to `max_backoff`, each with random jitter. Only calls
    whose repetition cannot change the outcome are retried: reads (a streamed read only before
    its first message), saves of checkpoints and snapshots, hard deletes, and appends whose
    events all carry an id (NewEvent gives each one by default). `CallRetry(attempts=1)` turns
    retries off.
    """

    # Waits of about 0.1, 0.2, 0.4, 0.8, 1, 1, 1 s (each 50-100% of that, for jitter): long
    # enough to ride out a server restart of a few seconds.
    attempts: int = 8
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    multiplier: float = 2.0
    codes: Sequence[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("call_retry.attempts must be at least 1")

    def waits(self) -> Iterator[float]:
        """The waits before the second, third... attempt."""
        wait = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield wait * random.uniform(0.5, 1.0)
            wait = min(wait * self.multiplier, self.max_backoff)


Pem = Union[bytes, str]


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the bearer token) to every call of a channel, unless the call names
    the same key itself."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]):
        self._pairs = tuple(pairs)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        given = {key for key, _ in metadata}
        metadata.extend(pair for pair in self._pairs if pair[0] not in given)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def _pem(value: Optional[Pem], name: str) -> Optional[bytes]:
    if value is None:
        return None
    data = value.encode() if isinstance(value, str) else bytes(value)
    if b"-----BEGIN" not in data:
        raise ValueError(f"{name} must be PEM text (the file's contents, not its path)")
    return data


def _split_target(target: str) -> Tuple[str, Optional[bool]]:
    """Strips an http:// or https:// scheme: returns the address, and True for https, False for
    http, None without a scheme."""
    for scheme, tls in (("https://", True), ("http://", False)):
        if target.startswith(scheme):
            return target[len(scheme):].rstrip("/"), tls
    return target, None


@dataclass(frozen=True)
class _ChannelSettings:
    """What a client's options say about its channel, checked: where to connect, with which TLS
    credentials (None: plaintext), and the authorization header to send (if any)."""

    address: str
    credentials: Optional[grpc.ChannelCredentials]
    authorization: Optional[Tuple[str, str]]

    @classmethod
    def check(
        cls,
        target: str,
        token: Optional[str],
        tls_ca: Optional[Pem],
        tls_client_cert: Optional[Pem],
        tls_client_key: Optional[Pem],
    ) -> "_ChannelSettings":
        address, scheme_tls = _split_target(target)
        ca = _pem(tls_ca, "tls_ca")
        cert = _pem(tls_client_cert, "tls_client_cert")
        key = _pem(tls_client_key, "tls_client_key")
        if (cert is None) != (key is None):
            raise ValueError("give tls_client_cert and tls_client_key together")
        pem_given = ca is not None or cert is not None
        if pem_given and scheme_tls is False:
            raise ValueError(f"TLS options given for a plaintext target {target!r}")
        credentials = (
            grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            if scheme_tls or pem_given
            else None
        )
        authorization = None
        if token is not None:
            if not token or any(not " " <= c <= "~" for c in token) or token != token.strip():
                raise ValueError("token must be non-empty printable ASCII without surrounding spaces")
            authorization = ("authorization", f"Bearer {token}")
        return cls(address, credentials, authorization)


class Client:
    """A connection to one Highwater server.

    Unary calls use `timeout` seconds as their deadline. Failures are raised as HighwaterError
    subclasses (see highwater_client.errors). Use as a context manager, or call close().

    `token` is sent as `authorization: Bearer <token>` with every call, streams and the generated
    stubs' calls included (a server started with --auth-file needs one). TLS is used for an
    `https://host:port` target or when any of the PEM options is given: `tls_ca` is the CA that
    signed the server's certificate (default: the system's trusted CAs), `tls_client_cert` and
    `tls_client_key` a client certificate for servers that require one (--tls-client-ca). A plain
    `host:port` (or `http://host:port`) without them is plaintext, with or without a token: fine
    on a loopback address; elsewhere the token would travel in the clear.
    """

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
        channel: Optional[grpc.Channel] = None,
    ):
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.call_retry = call_retry or CallRetry()
        settings = _ChannelSettings.check(target, token, tls_ca, tls_client_cert, tls_client_key)
        #: True when the channel this client made uses TLS.
        self.tls = settings.credentials is not None
        if channel is not None:
            if self.tls:
                raise ValueError("give either a channel or TLS options, not both")
        elif settings.credentials is not None:
            channel = grpc.secure_channel(settings.address, settings.credentials, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(settings.address, options=_CHANNEL_OPTIONS)
        if settings.authorization is not None:
            channel = grpc.intercept_channel(channel, _AddMetadata([settings.authorization]))
        self.channel = channel
        # The generated stubs, for anything this layer does not wrap.
        self.event_store = event_store_pb2_grpc.EventStoreServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, retry: bool = True):
        """A unary call; `retry`: repeating it cannot change its outcome (see CallRetry)."""
        waits = self.call_retry.waits() if retry else iter(())
        while True:
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                wait = next(waits, None) if e.code() in self.call_retry.codes else None
                if wait is None:
                    raise from_rpc_error(e) from None
                log.debug("%s, retrying in %.3fs", e.code().name, wait)
                time.sleep(wait)

    def _stream(self, open_call, retry: bool = True) -> Iterator:
        """The messages of a streamed call; `open_call()` starts it, and with `retry` again after
        a retryable failure that came before the first message."""
        waits = self.call_retry.waits() if retry else iter(())
        while True:
            call = open_call()
            received = False
            try:
                for message in call:
                    received = True
                    yield message
                return
            except grpc.RpcError as e:
                wait = None if received or e.code() not in self.call_retry.codes else next(waits, None)
                if wait is None:
                    raise from_rpc_error(e) from None
                log.debug("%s before the first message, retrying in %.3fs", e.code().name, wait)
                time.sleep(wait)
            finally:
                call.cancel()  # no-op when finished; stops the server's work if the caller stopped

    # --- Health ---------------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The server's health status name, such as "SERVING" or "NOT_SERVING"."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Waits until the event store reports SERVING; raises Unavailable after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                if self.health("highwater.v1.EventStoreService") == "SERVING":
                    return
                last = "NOT_SERVING"
            except HighwaterError as e:
                last = e
            time.sleep(0.1)
        raise Unavailable(f"server at {self.target} not ready after {timeout}s: {last}")

    # --- Writing and reading --------------------------------------------------------------------

    def append(
        self,
        stream: str,
        events: Union[NewEvent, Iterable[NewEvent]],
        expected_revision: ExpectedRevision = "any",
    ) -> AppendResult:
        """Appends events to a stream atomically.

        `expected_revision` is the revision the stream's last event must have (an int), or one of
        "any" (no check), "no-stream" (the stream must not exist) or "exists". A failed check raises
        WrongExpectedRevision. Appending the same NewEvent objects again is a safe retry.
        """
        if isinstance(events, NewEvent):
            events = [events]
        request = event_store_pb2.AppendRequest(
            stream=stream, events=[e.to_proto() for e in events]
        )
        _set_expected(request, expected_revision)
        # Safe to repeat only if the server can recognise the events again by their ids.
        r = self._call(self.event_store.Append, request, retry=all(e.id for e in request.events))
        return AppendResult(r.first_revision, r.last_revision, r.first_position, r.last_position)

    def delete_stream(self, stream: str, expected_revision: ExpectedRevision = "any") -> int:
        """Soft-deletes a stream; returns the last deleted revision.

        The stream then reads as NotFound and its events are hidden from subscribe_stream, but
        they stay in the global log (read_all, subscribe_all). An append recreates the stream
        ("no-stream" is accepted) and its revisions continue after the returned one.
        `expected_revision` is checked as in append(): a failed check raises
        WrongExpectedRevision. Raises NotFound if the stream does not exist or is already deleted,
        and FailedPrecondition if it was hard-deleted. Needs a token with role write.
        """
        request = event_store_pb2.DeleteStreamRequest(stream=stream)
        _set_expected(request, expected_revision)
        # Not repeated: a soft delete that committed would answer its repetition NOT_FOUND.
        return self._call(self.event_store.DeleteStream, request, retry=False).deleted_revision

    def hard_delete_stream(
        self, stream: str, expected_revision: ExpectedRevision = "any"
    ) -> HardDeleteResult:
        """Hard-deletes a stream: erases its events from the database, those hidden by an earlier
        soft delete included, and closes it for good.

        read_all and subscribe_all no longer return the events (their positions become gaps in the
        log); later appends and deletes of the stream raise FailedPrecondition, reads NotFound.
        Projections keep what they applied from the events until they are rebuilt.
        `expected_revision` is checked as in append() (WrongExpectedRevision). Raises NotFound if
        the stream never existed. A repeat of a hard delete answers as the first one did (the
        same result, after erasing anything left), so it is safe to retry. An administration call
        (AdminService): needs a token with role admin.
        """
        request = admin_pb2.HardDeleteStreamRequest(stream=stream)
        _set_expected(request, expected_revision)
        r = self._call(self.admin.HardDeleteStream, request)
        return HardDeleteResult(r.deleted_revision, r.erased_events)

    def read_stream(
        self,
        stream: str,
        from_revision: Optional[int] = None,
        backwards: bool = False,
        limit: Optional[int] = None,
        original: bool = False,
    ) -> Iterator[RecordedEvent]:
        """Iterates over a stream's events, from `from_revision` (inclusive).

        `from_revision` defaults to the stream's start, or to its last event when reading
        backwards. Events come through the server's upcasters unless `original` is true (then as
        stored). Raises NotFound (when iterated) if the stream does not exist, FailedPrecondition
        if an upcaster fails on an event.
        """
        if from_revision is None:
            from_revision = U64_MAX if backwards else 0
        request = event_store_pb2.ReadStreamRequest(
            stream=stream,
            from_revision=from_revision,
            direction=_direction(backwards),
            max_count=limit or 0,
            original=original,
        )
        messages = self._stream(lambda: self.event_store.ReadStream(request))
        return (RecordedEvent.from_proto(m.event) for m in messages)

    # --- Snapshots ------------------------------------------------------------------------------

    def save_snapshot(
        self,
        stream: str,
        revision: int,
        type: str,
        data: Any,
        content_type: str = "",
    ) -> Snapshot:
        """Saves the state of a stream as of `revision` (that event included).

        `data` is stored byte for byte when it is bytes; anything else is encoded as JSON. Saving
        again at the same revision replaces that snapshot; the server keeps each stream's latest
        few. Raises InvalidArgument if `revision` is beyond the stream's last (or deleted),
        NotFound if the stream does not exist, FailedPrecondition if it was hard-deleted. Needs a
        token with role write.
        """
        request = event_store_pb2.SaveSnapshotRequest(
            stream=stream,
            revision=revision,
            type=type,
            data=encode_data(data),
            content_type=content_type,
        )
        return Snapshot.from_proto(self._call(self.event_store.SaveSnapshot, request).snapshot)

    def read_from_snapshot(
        self, stream: str, limit: Optional[int] = None
    ) -> Tuple[Optional[Snapshot], Iterator[RecordedEvent]]:
        """The stream's latest snapshot (None if it has none) and an iterator over the events
        after it. Raises NotFound if the stream does not exist."""
        request = event_store_pb2.ReadStreamRequest(
            stream=stream, max_count=limit or 0, from_latest_snapshot=True
        )
        messages = self._stream(lambda: self.event_store.ReadStream(request))
        first = next(messages, None)
        if first is None:
            return None, iter(())
        if first.HasField("snapshot"):
            rest: Iterator[RecordedEvent] = (RecordedEvent.from_proto(m.event) for m in messages)
            return Snapshot.from_proto(first.snapshot), rest

        def events() -> Iterator[RecordedEvent]:
            yield RecordedEvent.from_proto(first.event)
            for m in messages:
                yield RecordedEvent.from_proto(m.event)

        return None, events()

    def load_aggregate(
        self,
        stream: str,
        fold: Callable[[S, RecordedEvent], S],
        initial: S,
        snapshot_type: str,
        snapshot_every: Optional[int] = None,
        encode: Callable[[S], Any] = lambda state: state,
        decode: Callable[[Snapshot], S] = lambda snapshot: snapshot.json(),
    ) -> LoadedAggregate:
        """Loads an aggregate: its latest snapshot (of `snapshot_type`; another type is ignored and
        the stream folded from `initial`), then `fold` over the events after it.

        With `snapshot_every`, a load that folded at least that many events saves a snapshot of
        the new state (`encode(state)`, stored as save_snapshot stores data: JSON unless bytes),
        so that the next load reads fewer. `decode` turns a snapshot back into a state (default:
        its JSON). Raises NotFound if the stream does not exist.
        """
        _check_snapshot_every(snapshot_every)
        snapshot, events = self.read_from_snapshot(stream)
        if snapshot is not None and snapshot.type != snapshot_type:
            snapshot = None
            events = self.read_stream(stream)
        loaded = _fold_aggregate(stream, snapshot, events, fold, initial, decode, snapshot_every)
        if loaded.saved_snapshot:
            self.save_snapshot(stream, loaded.revision, snapshot_type, encode(loaded.state))
        return loaded

    def read_all(
        self,
        after_position: Optional[int] = None,
        backwards: bool = False,
        limit: Optional[int] = None,
        original: bool = False,
    ) -> Iterator[RecordedEvent]:
        """Iterates over the global log (through the upcasters unless `original` is true).

        Forwards: events with positions above `after_position` (default 0, the whole log).
        Backwards: positions at or below `after_position` (default: from the last event) downwards.
        """
        if after_position is None:
            after_position = U64_MAX if backwards else 0
        request = event_store_pb2.ReadAllRequest(
            after_position=after_position,
            direction=_direction(backwards),
            max_count=limit or 0,
            original=original,
        )
        messages = self._stream(lambda: self.event_store.ReadAll(request))
        return (RecordedEvent.from_proto(m.event) for m in messages)

    def head_position(self) -> int:
        """The position of the log's newest event (0 for an empty store).

        Below the last position ever given when the newest events were hard-deleted; reading or
        subscribing after it still misses nothing.
        """
        last = next(iter(self.read_all(backwards=True, limit=1)), None)
        return last.position if last else 0

    # --- Subscriptions --------------------------------------------------------------------------

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
    ) -> "AllSubscription":
        """Follows the global log; returns an iterator of RecordedEvent.

        Start (one at most): a durable `subscription` name (after its stored checkpoint, created at
        0 if missing), `after_position` (default 0: everything), or `from_end` (only what commits
        after this call). When the connection drops, the iterator reconnects with backoff and
        resumes right after the last position it received, so it yields every event once, in order.
        It does not save the durable checkpoint: call save_checkpoint() once events are processed.
        With `checkpoints=True` it also yields Checkpoint values (position reached, caught up...).
        Events come through the server's upcasters unless `original` is true.
        """
        if sum((subscription is not None, after_position is not None, from_end)) > 1:
            raise ValueError("give at most one of subscription, after_position and from_end")
        if from_end:
            # Pinned to a position now, so that a reconnect cannot skip what committed meanwhile.
            after_position = self.head_position()
        elif subscription is None and after_position is None:
            after_position = 0
        return AllSubscription(
            self,
            subscription=subscription,
            after_position=after_position,
            filter=event_store_pb2.Filter(
                stream_prefixes=list(stream_prefixes), event_types=list(event_types)
            ),
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
    ) -> "StreamSubscription":
        """Follows one stream from `from_revision` (inclusive), history then live; the stream need
        not exist yet. Reconnects like subscribe_all, resuming after the last revision received."""
        return StreamSubscription(
            self, stream, from_revision, checkpoints=checkpoints, retry=retry or self.retry, original=original
        )

    def save_checkpoint(self, subscription: str, position: int) -> int:
        """Stores a durable subscription's checkpoint; returns the stored position (which never
        moves backwards: an older position leaves the stored one)."""
        request = event_store_pb2.SaveCheckpointRequest(subscription=subscription, position=position)
        return self._call(self.event_store.SaveCheckpoint, request).position

    def list_subscriptions(self) -> List[SubscriptionInfo]:
        """Every durable subscription with its checkpoint and lag, by name."""
        r = self._call(self.event_store.ListSubscriptions, event_store_pb2.ListSubscriptionsRequest())
        return [SubscriptionInfo(s.name, s.position, s.lag) for s in r.subscriptions]

    def delete_subscription(self, subscription: str) -> None:
        """Deletes a durable subscription; NotFound if there is none of that name."""
        request = event_store_pb2.DeleteSubscriptionRequest(subscription=subscription)
        self._call(self.event_store.DeleteSubscription, request, retry=False)

    # --- Projections ----------------------------------------------------------------------------

    def rebuild(self, projection: str, in_place: bool = False) -> Iterator[RebuildProgress]:
        """Rebuilds a projection on the server, yielding its progress until the phase is DONE or
        FAILED (check `.phase` and `.error` of the last one). Blue/green unless `in_place`."""
        strategy = (
            admin_pb2.REBUILD_STRATEGY_IN_PLACE if in_place else admin_pb2.REBUILD_STRATEGY_BLUE_GREEN
        )
        request = admin_pb2.AdminRebuildRequest(projection=projection, strategy=strategy)
        # Not repeated: a rebuild the server started before the failure would start again.
        messages = self._stream(lambda: self.admin.AdminRebuild(request), retry=False)
        return (RebuildProgress.from_proto(m.progress) for m in messages)

    def register_projection(
        self, toml: Optional[str] = None, *, definition: Optional[admin_pb2.ProjectionDefinition] = None
    ) -> ProjectionInfo:
        """Registers a projection from the text of a TOML definition file, or a structured
        ProjectionDefinition message. InvalidArgument names what the server refused."""
        if (toml is None) == (definition is None):
            raise ValueError("give exactly one of toml and definition")
        request = (
            admin_pb2.RegisterProjectionRequest(toml=toml)
            if toml is not None
            else admin_pb2.RegisterProjectionRequest(definition=definition)
        )
        return ProjectionInfo.from_proto(self._call(self.admin.RegisterProjection, request, retry=False).projection)

    # --- Upcasters -------------------------------------------------------------------------------

    def register_upcaster(
        self, toml: Optional[str] = None, *, definition: Optional[admin_pb2.UpcasterDefinition] = None
    ) -> admin_pb2.UpcasterDefinition:
        """Registers (or replaces, by name) an upcaster from the text of a TOML definition file or
        a structured UpcasterDefinition; returns it as stored. InvalidArgument names what the
        server refused. Reads then return upcast events unless asked for `original` ones."""
        if (toml is None) == (definition is None):
            raise ValueError("give exactly one of toml and definition")
        request = (
            admin_pb2.RegisterUpcasterRequest(toml=toml)
            if toml is not None
            else admin_pb2.RegisterUpcasterRequest(definition=definition)
        )
        return self._call(self.admin.RegisterUpcaster, request, retry=False).upcaster

    def list_upcasters(self) -> List[admin_pb2.RegisteredUpcaster]:
        """Every upcaster with where it came from, by name."""
        return list(self._call(self.admin.ListUpcasters, admin_pb2.ListUpcastersRequest()).upcasters)

    def delete_upcaster(self, name: str) -> None:
        """Deletes an upcaster (its events are read as stored again); NotFound if unknown."""
        self._call(self.admin.DeleteUpcaster, admin_pb2.DeleteUpcasterRequest(name=name), retry=False)

    def get_projection(self, name: str) -> ProjectionInfo:
        """One projection's status; NotFound for an unknown name."""
        request = admin_pb2.GetProjectionRequest(name=name)
        return ProjectionInfo.from_proto(self._call(self.admin.GetProjection, request).projection)

    def list_projections(self) -> List[ProjectionInfo]:
        r = self._call(self.admin.ListProjections, admin_pb2.ListProjectionsRequest())
        return [ProjectionInfo.from_proto(p) for p in r.projections]

    def list_system_messages(
        self, projection: str = "", kind: SystemMessageKind = "", include_archived: bool = False, limit: int = 0
    ) -> List[SystemMessage]:
        """Skipped events and dead letters, newest first (`kind`: "skip" or "dead_letter")."""
        request = admin_pb2.ListSystemMessagesRequest(
            projection=projection, kind=kind, include_archived=include_archived, limit=limit
        )
        r = self._call(self.admin.ListSystemMessages, request)
        return [
            SystemMessage(
                m.id, m.projection, m.version, m.position, m.kind, m.reason, m.HasField("archived_at")
            )
            for m in r.messages
        ]

    def retry_dead_letters(self, projection: str) -> RetryResult:
        request = admin_pb2.RetryDeadLettersRequest(projection=projection)
        r = self._call(self.admin.RetryDeadLetters, request, retry=False)
        return RetryResult(r.applied, r.still_failing)


def _check_snapshot_every(snapshot_every: Optional[int]) -> None:
    if snapshot_every is not None and snapshot_every < 1:
        raise ValueError("snapshot_every must be at least 1")


def _fold_aggregate(
    stream: str,
    snapshot: Optional[Snapshot],
    events: Iterable[RecordedEvent],
    fold: Callable[[S, RecordedEvent], S],
    initial: S,
    decode: Callable[[Snapshot], S],
    snapshot_every: Optional[int],
) -> LoadedAggregate:
    """The state from `snapshot` (or `initial`) folded over `events`; `saved_snapshot` says
    whether the caller is to save it (it folded at least `snapshot_every` events)."""
    state = decode(snapshot) if snapshot is not None else initial
    revision = snapshot.revision if snapshot is not None else None
    folded = 0
    for event in events:
        state = fold(state, event)
        revision = event.revision
        folded += 1
    if revision is None:
        raise NotFound(f"stream {stream!r} has no events", grpc.StatusCode.NOT_FOUND)
    return LoadedAggregate(
        state=state,
        revision=revision,
        snapshot_revision=snapshot.revision if snapshot is not None else None,
        events_folded=folded,
        saved_snapshot=snapshot_every is not None and folded >= snapshot_every,
    )


def _set_expected(request, expected_revision: ExpectedRevision) -> None:
    """Sets the `expected` oneof (revision or state) of an append or delete request."""
    if isinstance(expected_revision, bool) or not isinstance(expected_revision, (int, str)):
        raise TypeError(f"expected_revision must be an int or a string, not {expected_revision!r}")
    if isinstance(expected_revision, int):
        if expected_revision < 0:
            raise ValueError("expected_revision must be >= 0")
        request.revision = expected_revision
    elif expected_revision in _EXPECTED_STATES:
        request.state = _EXPECTED_STATES[expected_revision]
    else:
        raise ValueError(
            f"expected_revision must be an int or one of {sorted(_EXPECTED_STATES)}, "
            f"not {expected_revision!r}"
        )


def _direction(backwards: bool) -> int:
    return event_store_pb2.DIRECTION_BACKWARDS if backwards else event_store_pb2.DIRECTION_FORWARDS


class _ResumingSubscription:
    """An iterator over a server stream of events that reconnects when the stream breaks.

    Subclasses say how to open the stream from the current state (`_open`), and keep that state
    up to date as messages arrive (`_is_new`, `_advance`). close() (from any thread) ends it.
    """

    def __init__(self, client: Client, checkpoints: bool, retry: RetryPolicy, original: bool = False):
        self._client = client
        self._original = original  # events as stored, not through the server's upcasters
        self._checkpoints = checkpoints
        self._retry = retry
        self._closed = threading.Event()
        self._call = None
        self.caught_up = False  # True while the server delivers live events
        self.reconnects = 0
        self._iterator = self._run()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iterator)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops the subscription; an iteration in progress (in another thread) ends cleanly."""
        self._closed.set()
        if self._call is not None:
            self._call.cancel()
        try:
            self._iterator.close()
        except ValueError:
            pass  # running in another thread: the cancelled call ends it there

    def _run(self) -> Iterator[Union[RecordedEvent, Checkpoint]]:
        backoff = self._retry.initial_backoff
        failing_since: Optional[float] = None
        while not self._closed.is_set():
            error: Optional[grpc.RpcError] = None
            self._call = call = self._open()
            if self._closed.is_set():
                call.cancel()  # close() ran between the loop's check and now: it missed this call
            try:
                for message in call:
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
                if self._closed.is_set():
                    return
                if e.code() not in self._retry.codes:
                    raise from_rpc_error(e) from None
                error = e
            finally:
                call.cancel()
            if self._closed.is_set():
                return

            # The stream broke (or the server closed it): wait, then reconnect from our position.
            self.caught_up = False
            now = time.monotonic()
            failing_since = failing_since or now
            limit = self._retry.give_up_after
            if limit is not None and now - failing_since > limit:
                if error is not None:
                    raise from_rpc_error(error) from None
                raise Unavailable("the server kept closing the subscription")
            log.info("subscription interrupted (%s); reconnecting", error.code() if error else "closed")
            self._closed.wait(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * self._retry.multiplier, self._retry.max_backoff)
            self.reconnects += 1

    def _open(self):
        raise NotImplementedError

    def _is_new(self, event) -> bool:
        raise NotImplementedError

    def _advance(self, event, position: int) -> None:
        raise NotImplementedError


class AllSubscription(_ResumingSubscription):
    """A SubscribeAll iterator. `position` is the last position received (everything up to it was
    yielded or filtered out): the value to save as a checkpoint once processed. It is None until
    a durable subscription has received its first message."""

    def __init__(self, client, *, subscription, after_position, filter, checkpoint_interval, **kw):
        super().__init__(client, **kw)
        self.subscription = subscription
        self.position: Optional[int] = after_position
        self._filter = filter
        self._checkpoint_interval = checkpoint_interval

    def _open(self):
        request = event_store_pb2.SubscribeAllRequest(
            filter=self._filter, checkpoint_interval=self._checkpoint_interval, original=self._original
        )
        if self.position is None:
            request.subscription = self.subscription  # first connection: the stored checkpoint
        else:
            # Resuming (or starting from a position): the server's stored checkpoint may lag
            # behind what was already yielded, so continue from our own position instead.
            request.after_position = self.position
        return self._client.event_store.SubscribeAll(request)

    def _is_new(self, event) -> bool:
        return self.position is None or event.position > self.position

    def _advance(self, event, position: int) -> None:
        if self.position is None or position > self.position:
            self.position = position


class StreamSubscription(_ResumingSubscription):
    """A SubscribeStream iterator. `next_revision` is the revision it will deliver next."""

    def __init__(self, client, stream: str, from_revision: int, **kw):
        super().__init__(client, **kw)
        self.stream = stream
        self.next_revision = from_revision

    def _open(self):
        request = event_store_pb2.SubscribeStreamRequest(
            stream=self.stream, from_revision=self.next_revision, original=self._original
        )
        return self._client.event_store.SubscribeStream(request)

    def _is_new(self, event) -> bool:
        return event.revision >= self.next_revision

    def _advance(self, event, position: int) -> None:
        if event is not None:
            self.next_revision = event.revision + 1
