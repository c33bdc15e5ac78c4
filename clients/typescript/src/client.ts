// The Highwater client: a thin layer over the @grpc/grpc-js clients that ts-proto generates from
// proto/ (src/gen), with bigint positions, async iterables for streamed reads, subscriptions that
// resume after dropped connections, and errors as HighwaterError.

import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  Client as GrpcClient,
  type ClientReadableStream,
  credentials as grpcCredentials,
  type Interceptor,
  InterceptingCall,
  Metadata,
  type ServiceError,
  status as Status,
} from "@grpc/grpc-js";
import {
  AdminServiceClient,
  type HardDeleteStreamResponse,
  OnError,
  type ProjectionDefinition,
  type ProjectionInfo,
  type RegisteredUpcaster,
  type UpcasterDefinition,
  ProjectionMode,
  type RebuildProgress,
  RebuildProgress_Phase,
  RebuildStrategy,
  type SystemMessage,
} from "./gen/highwater/v1/admin.js";
import {
  type AppendResponse,
  type DeleteStreamResponse,
  Direction,
  EventStoreServiceClient,
  ExpectedState,
  type ProposedEvent,
  type ReadStreamResponse,
  type RecordedEvent,
  type SaveSnapshotResponse,
  type Snapshot,
  type SubscribeAllRequest,
  type SubscribeStreamRequest,
  type SubscriptionInfo,
} from "./gen/highwater/v1/event_store.js";
import { randomUUID } from "node:crypto";
import { HighwaterError, NotFoundError, toHighwaterError } from "./errors.js";
import { decodeHealthCheckResponse, encodeHealthCheckRequest, HEALTH_CHECK_PATH, type ServingStatus } from "./health.js";
import { Subscription, type SubscriptionOptions } from "./subscription.js";
import { toUint64, U64_MAX, type Uint64Input } from "./uint64.js";

/** The expected state of a stream before an append or a delete. */
export type ExpectedRevision =
  /** No check (the default). */
  | "any"
  /** The stream must not exist yet. */
  | "no-stream"
  /** The stream must have at least one event. */
  | "exists"
  /** The stream's last event must have exactly this revision. */
  | Uint64Input;

/** An event to append. */
export interface EventData {
  /** Event type, such as `ProductAdded`. */
  type: string;
  /**
   * Payload. A Uint8Array (or Buffer) is sent as it is; a string as its UTF-8 bytes; anything
   * else as its JSON text. The default content type is `application/json`, which the server
   * checks is valid JSON.
   */
  data?: unknown;
  /**
   * A UUID. By default the client makes one (a random UUID) when it builds the request, so that
   * a retried call of the same request is recognised by the server and writes nothing; give your
   * own to make retries of separate calls idempotent too.
   */
  id?: string;
  /** Media type of `data`; empty means `application/json`. */
  contentType?: string;
  /** Free-form string pairs stored with the event. */
  metadata?: Record<string, string>;
}

/** Where appended events landed. */
export type AppendResult = AppendResponse;

export interface AppendOptions {
  /** Optimistic concurrency check; `"any"` (no check) by default. */
  expectedRevision?: ExpectedRevision;
}

/** Options of `deleteStream` and `hardDeleteStream`. */
export interface DeleteStreamOptions {
  /** Optimistic concurrency check, as for an append; `"any"` (no check) by default. */
  expectedRevision?: ExpectedRevision;
}

/** What a hard delete erased: `deletedRevision`, the stream's last revision, and `erasedEvents`. */
export type HardDeleteResult = HardDeleteStreamResponse;

export interface ReadStreamOptions {
  /**
   * Forwards: the first revision returned (default 0). Backwards: the highest revision returned
   * (default: the stream's last event).
   */
  fromRevision?: Uint64Input;
  /** Read newest first. */
  backwards?: boolean;
  /** The most events to return (default: all). */
  limit?: Uint64Input;
  /** Events as stored, not through the server's upcasters (default false). */
  original?: boolean;
}

export interface ReadAllOptions {
  /**
   * Forwards: return events with positions strictly above this one (default 0: from the first).
   * Backwards: return events at or below this one (default: from the last event).
   */
  afterPosition?: Uint64Input;
  /** Read newest first. */
  backwards?: boolean;
  /** The most events to return (default: all). */
  limit?: Uint64Input;
  /** Events as stored, not through the server's upcasters (default false). */
  original?: boolean;
}

/** A snapshot to save: the state of a stream as of `revision`, that event included. */
export interface SnapshotData {
  /** The last revision the state reflects; at most the stream's last. */
  revision: Uint64Input;
  /** The snapshot's type: the name of the state's shape, checked when loading. */
  type: string;
  /** The state: bytes as they are, a string as UTF-8, anything else as its JSON text. */
  data: unknown;
  /** Media type of `data`; empty means `application/json`. */
  contentType?: string;
}

/** A stream read from its latest snapshot: the snapshot, if any, and the events after it. */
export interface SnapshotRead {
  snapshot: Snapshot | undefined;
  events: RecordedEvent[];
}

export interface LoadAggregateOptions<S> {
  /** The state before the first event. */
  initial: S;
  /** Folds one event into the state. */
  fold: (state: S, event: RecordedEvent) => S;
  /** The snapshots' type: a snapshot of another type is ignored (the stream is folded from `initial`). */
  snapshotType: string;
  /** Save a snapshot when a load folded at least this many events (default: never). */
  snapshotEvery?: number;
  /** The state as snapshot data (default: the state itself, stored as JSON). */
  encode?: (state: S) => unknown;
  /** A snapshot back to a state (default: its data parsed as JSON). */
  decode?: (snapshot: Snapshot) => S;
}

/** What `loadAggregate` folded. */
export interface LoadedAggregate<S> {
  /** The fold of every event up to `revision`. */
  state: S;
  /** The stream's last revision. */
  revision: bigint;
  /** The snapshot the load started from, if any. */
  snapshotRevision: bigint | undefined;
  /** Events read and folded after the snapshot. */
  eventsFolded: number;
  /** Whether the load saved a new snapshot of `state`. */
  savedSnapshot: boolean;
}

/** Which events a subscription delivers; an empty list matches everything. */
export interface EventFilter {
  /** Stream name prefixes, such as `cart-`. */
  streamPrefixes?: string[];
  /** Exact event types. */
  eventTypes?: string[];
}

export interface SubscribeAllOptions extends SubscriptionOptions {
  /**
   * A durable subscription: start after its stored checkpoint (created at 0 if missing). Save
   * progress with `saveCheckpoint(name, subscription.position)`.
   */
  subscription?: string;
  /** Start after this position (default 0: from the first event). */
  afterPosition?: Uint64Input;
  /** Start at the end: only what commits after the call. */
  fromEnd?: boolean;
  /** Which events to deliver. */
  filter?: EventFilter;
  /** Ask for a checkpoint at least every this many scanned events (server default 1000). */
  checkpointInterval?: number;
  /** Events as stored, not through the server's upcasters (default false). */
  original?: boolean;
}

export interface SubscribeStreamOptions extends SubscriptionOptions {
  /** The first revision to deliver (default 0). */
  fromRevision?: Uint64Input;
  /** Start at the end: only what commits after the call. */
  fromEnd?: boolean;
  /** Events as stored, not through the server's upcasters (default false). */
  original?: boolean;
}

export interface RebuildOptions {
  /** Empty and replay the active table instead of building the next version beside it. */
  inPlace?: boolean;
}

/** A projection definition to register; the TOML text of a projection file is accepted too. */
export interface ProjectionDefinitionInput {
  name: string;
  version?: number;
  mode?: "inline" | "async";
  onError?: "fail" | "skip";
  setup: string;
  handlers: Record<string, string>;
}

export interface ListSystemMessagesOptions {
  projection?: string;
  kind?: "skip" | "dead_letter";
  includeArchived?: boolean;
  limit?: number;
}

/**
 * Channel options the client sets unless told otherwise: after a lost connection the channel tries
 * again at most every 5 s (the @grpc/grpc-js default grows to 120 s), so a subscription resumes
 * soon after the server is back.
 */
export const DEFAULT_CHANNEL_OPTIONS: Readonly<ChannelOptions> = {
  // grpc-js waits 1 s before its first reconnect, longer than the retries' first waits.
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 5_000,
};

/**
 * Retries of calls that are safe to repeat: reads (a streamed read only before its first
 * message), saves of checkpoints and snapshots, hard deletes, listings, health, and appends whose
 * events all carry an id (the client gives each one by default). Soft deletes, subscription
 * deletes, registrations, rebuilds and dead-letter retries are never repeated.
 */
export interface CallRetryOptions {
  /** Calls in all, the first included (default 4). */
  attempts?: number;
  /** The first wait, in milliseconds (default 50); each wait has random jitter. */
  initialDelayMs?: number;
  /** The longest wait (default 1,000). */
  maxDelayMs?: number;
  /** How much each wait grows (default 2). */
  multiplier?: number;
  /** The codes retried (default UNAVAILABLE and DEADLINE_EXCEEDED). */
  codes?: Status[];
}

// Waits of about 100, 200, 400, 800, 1000, 1000, 1000 ms (each 50-100% of that, for jitter):
// long enough to ride out a server restart of a few seconds.
export const DEFAULT_CALL_RETRY: Readonly<Required<CallRetryOptions>> = {
  attempts: 8,
  initialDelayMs: 100,
  maxDelayMs: 1_000,
  multiplier: 2,
  codes: [Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED],
};

/** A CallRetryOptions with its defaults filled in. */
class RetryPlan {
  private readonly options: Required<CallRetryOptions>;

  constructor(options: CallRetryOptions) {
    this.options = { ...DEFAULT_CALL_RETRY, ...options };
    if (!(Number.isInteger(this.options.attempts) && this.options.attempts >= 1)) {
      throw new RangeError("callRetry.attempts must be an integer of at least 1");
    }
  }

  /** Whether a failure is one this plan retries. */
  retries(err: unknown): boolean {
    return err instanceof HighwaterError && this.options.codes.includes(err.code);
  }

  /** The waits before the second, third... attempt. */
  *delays(): Generator<number, void, undefined> {
    let delay = this.options.initialDelayMs;
    for (let attempt = 1; attempt < this.options.attempts; attempt += 1) {
      yield delay * (0.5 + Math.random() / 2);
      delay = Math.min(delay * this.options.multiplier, this.options.maxDelayMs);
    }
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The deadline of each unary call unless `callTimeoutMs` says otherwise. */
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/** TLS settings for a server started with `--tls-cert`/`--tls-key`. */
export interface TlsOptions {
  /** PEM of the CA that signed the server's certificate (default: Node's trusted CAs). */
  ca?: string | Buffer;
  /** PEM client certificate, for a server started with `--tls-client-ca` (with `key`). */
  cert?: string | Buffer;
  /** PEM private key of `cert`. */
  key?: string | Buffer;
}

export interface ClientOptions {
  /**
   * Bearer token, sent as `authorization: Bearer <token>` with every call (streams, the
   * subscriptions' reconnects and the admin calls included), for a server started with
   * `--auth-file`. It works over TLS and plaintext alike.
   */
  token?: string;
  /**
   * Connect with TLS. An `https://host:port` address means TLS too (with Node's trusted CAs unless
   * `ca` is given). The address's host name must match the server's certificate.
   */
  tls?: TlsOptions;
  /** Channel credentials (instead of `tls`); plaintext (insecure) by default. */
  credentials?: ChannelCredentials;
  /** @grpc/grpc-js channel options, such as `grpc.keepalive_time_ms`, over DEFAULT_CHANNEL_OPTIONS. */
  channelOptions?: ChannelOptions;
  /**
   * How calls that are safe to repeat are retried after UNAVAILABLE or DEADLINE_EXCEEDED
   * (docs/CLIENTS.md, "Retries"): over DEFAULT_CALL_RETRY; `false` for no retries.
   */
  callRetry?: CallRetryOptions | false;
  /**
   * Deadline of each unary call, in milliseconds (default 30,000: DEFAULT_CALL_TIMEOUT_MS);
   * `null` for none. Streamed reads and subscriptions have no deadline.
   */
  callTimeoutMs?: number | null;
}

/** A rebuild that ended in PHASE_FAILED; `progress.error` says why. */
export class RebuildFailedError extends Error {
  constructor(readonly progress: RebuildProgress) {
    super(`rebuild of version ${progress.version} failed: ${progress.error}`);
    this.name = "RebuildFailedError";
  }
}

/**
 * The events of a read. Iterate it with `for await` (each iteration runs the read again) or
 * collect it with `toArray()`. A failed read throws a HighwaterError (NOT_FOUND for a missing
 * stream).
 */
export class ReadResult implements AsyncIterable<RecordedEvent> {
  constructor(
    private readonly open: () => ClientReadableStream<{ event?: RecordedEvent | undefined }>,
    private readonly retry?: RetryPlan,
  ) {}

  async *[Symbol.asyncIterator](): AsyncIterator<RecordedEvent> {
    for await (const message of iterateRetrying(this.open, this.retry)) {
      if (message.event) {
        yield message.event;
      }
    }
  }

  /** Every event of the read, in order. */
  async toArray(): Promise<RecordedEvent[]> {
    const events: RecordedEvent[] = [];
    for await (const event of this) {
      events.push(event);
    }
    return events;
  }
}

/** A client of one Highwater server (or load balancer address), over one channel. */
export class Client {
  private readonly eventStore: EventStoreServiceClient;
  private readonly adminService: AdminServiceClient;
  private readonly generic: GrpcClient;
  private readonly callTimeoutMs: number | undefined;
  private readonly retry: RetryPlan | undefined;

  /**
   * @param address `host:port` of the server, `127.0.0.1:50051` by default; `https://host:port`
   *   for TLS, `http://host:port` for plaintext.
   */
  constructor(readonly address: string = "127.0.0.1:50051", options: ClientOptions = {}) {
    const { target, tls } = splitAddress(address);
    const creds = channelCredentials(address, tls, options);
    const interceptors = options.token === undefined ? [] : [withMetadata("authorization", bearer(options.token))];
    const channelOptions: ChannelOptions = { ...DEFAULT_CHANNEL_OPTIONS, ...options.channelOptions };
    this.eventStore = new EventStoreServiceClient(target, creds, { ...channelOptions, interceptors });
    const shared = { ...channelOptions, channelOverride: this.eventStore.getChannel(), interceptors };
    this.adminService = new AdminServiceClient(target, creds, shared);
    this.generic = new GrpcClient(target, creds, shared);
    const timeout = options.callTimeoutMs === undefined ? DEFAULT_CALL_TIMEOUT_MS : options.callTimeoutMs;
    if (timeout !== null && !(timeout > 0 && (Number.isFinite(timeout) || timeout === Infinity))) {
      throw new RangeError(`callTimeoutMs must be a positive number of milliseconds or null, got ${timeout}`);
    }
    this.callTimeoutMs = timeout === null || timeout === Infinity ? undefined : timeout;
    this.retry = options.callRetry === false ? undefined : new RetryPlan(options.callRetry ?? {});
  }

  /** Closes the channel; calls in flight fail with CANCELLED or UNAVAILABLE. */
  close(): void {
    this.adminService.close();
    this.generic.close();
    this.eventStore.close();
  }

  // ---- event store ---------------------------------------------------------------------------

  /** Appends events to one stream atomically. Throws WrongExpectedRevisionError on a conflict. */
  async append(stream: string, events: EventData[], options: AppendOptions = {}): Promise<AppendResult> {
    const request = {
      stream,
      expected: toExpected(options.expectedRevision),
      events: events.map(toProposedEvent),
    };
    // Safe to repeat only if the server can recognise the events again by their ids.
    const retry = request.events.every((event) => event.id !== "") ? this.retry : undefined;
    return unary<AppendResponse>((cb) => this.eventStore.append(request, new Metadata(), this.unaryOptions(), cb), retry);
  }

  /**
   * Soft-deletes a stream and returns its last deleted revision. The stream then reads as
   * NOT_FOUND and `subscribeStream` skips its events, but they stay in the global log (`readAll`,
   * `subscribeAll`). An append recreates the stream (`"no-stream"` is accepted) and its revisions
   * continue after the returned one. Needs a token with role write.
   *
   * Throws WrongExpectedRevisionError when `expectedRevision` does not hold, a HighwaterError with
   * code NOT_FOUND if the stream does not exist or is deleted already, and FAILED_PRECONDITION if
   * it was hard-deleted.
   */
  async deleteStream(stream: string, options: DeleteStreamOptions = {}): Promise<bigint> {
    const request = { stream, expected: toExpected(options.expectedRevision) };
    const response = await unary<DeleteStreamResponse>((cb) =>
      this.eventStore.deleteStream(request, new Metadata(), this.unaryOptions(), cb)
    );
    return response.deletedRevision;
  }

  /** Reads one stream by revision. NOT_FOUND (as HighwaterError) if it does not exist. */
  readStream(stream: string, options: ReadStreamOptions = {}): ReadResult {
    const backwards = options.backwards ?? false;
    const request = {
      stream,
      fromRevision: options.fromRevision === undefined
        ? (backwards ? U64_MAX : 0n)
        : toUint64(options.fromRevision, "fromRevision"),
      direction: backwards ? Direction.DIRECTION_BACKWARDS : Direction.DIRECTION_FORWARDS,
      maxCount: options.limit === undefined ? 0n : toUint64(options.limit, "limit"),
      fromLatestSnapshot: false,
      original: options.original ?? false,
    };
    return new ReadResult(() => this.eventStore.readStream(request), this.retry);
  }

  /**
   * Saves a snapshot of a stream; saving again at the same revision replaces it, and the server
   * keeps each stream's latest few. Throws a HighwaterError: INVALID_ARGUMENT if the revision is
   * beyond the stream's last (or deleted), NOT_FOUND if the stream does not exist,
   * FAILED_PRECONDITION if it was hard-deleted. Needs a token with role write.
   */
  async saveSnapshot(stream: string, snapshot: SnapshotData): Promise<Snapshot> {
    const request = {
      stream,
      revision: toUint64(snapshot.revision, "revision"),
      type: snapshot.type,
      data: toBytes(snapshot.data),
      contentType: snapshot.contentType ?? "",
    };
    const response = await unary<SaveSnapshotResponse>((cb) =>
      this.eventStore.saveSnapshot(request, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
    return required(response.snapshot, "snapshot");
  }

  /** The stream's latest snapshot and the events after it. NOT_FOUND if the stream does not exist. */
  async readFromSnapshot(stream: string): Promise<SnapshotRead> {
    const request = { stream, fromRevision: 0n, direction: Direction.DIRECTION_FORWARDS, maxCount: 0n, fromLatestSnapshot: true, original: false };
    let snapshot: Snapshot | undefined;
    const events: RecordedEvent[] = [];
    for await (const message of iterateRetrying<ReadStreamResponse>(() => this.eventStore.readStream(request), this.retry)) {
      if (message.snapshot) {
        snapshot = message.snapshot;
      } else if (message.event) {
        events.push(message.event);
      }
    }
    return { snapshot, events };
  }

  /**
   * Loads an aggregate: its latest snapshot of `snapshotType`, then `fold` over the events after
   * it; with `snapshotEvery`, a load that folded at least that many events saves a snapshot of
   * the new state. NOT_FOUND if the stream does not exist.
   */
  async loadAggregate<S>(stream: string, options: LoadAggregateOptions<S>): Promise<LoadedAggregate<S>> {
    const every = options.snapshotEvery;
    if (every !== undefined && !(Number.isInteger(every) && every >= 1)) {
      throw new RangeError("snapshotEvery must be an integer of at least 1");
    }
    let { snapshot, events } = await this.readFromSnapshot(stream);
    if (snapshot !== undefined && snapshot.type !== options.snapshotType) {
      snapshot = undefined;
      events = await this.readStream(stream).toArray();
    }
    const decode = options.decode ?? ((found: Snapshot) => eventJson<S>(found));
    let state = snapshot === undefined ? options.initial : decode(snapshot);
    let revision = snapshot?.revision;
    for (const event of events) {
      state = options.fold(state, event);
      revision = event.revision;
    }
    if (revision === undefined) {
      throw new NotFoundError(Status.NOT_FOUND, `stream ${stream} has no events`);
    }
    const savedSnapshot = every !== undefined && events.length >= every;
    if (savedSnapshot) {
      const encode = options.encode ?? ((value: S) => value);
      await this.saveSnapshot(stream, { revision, type: options.snapshotType, data: encode(state) });
    }
    return {
      state,
      revision,
      snapshotRevision: snapshot?.revision,
      eventsFolded: events.length,
      savedSnapshot,
    };
  }

  /** Reads the global log by position. */
  readAll(options: ReadAllOptions = {}): ReadResult {
    const backwards = options.backwards ?? false;
    const request = {
      afterPosition: options.afterPosition === undefined
        ? (backwards ? U64_MAX : 0n)
        : toUint64(options.afterPosition, "afterPosition"),
      direction: backwards ? Direction.DIRECTION_BACKWARDS : Direction.DIRECTION_FORWARDS,
      maxCount: options.limit === undefined ? 0n : toUint64(options.limit, "limit"),
      original: options.original ?? false,
    };
    return new ReadResult(() => this.eventStore.readAll(request), this.retry);
  }

  /**
   * Follows the global log. The subscription yields each event once, in position order, and
   * resumes after a dropped connection (UNAVAILABLE...) from the last position it saw.
   */
  subscribeAll(options: SubscribeAllOptions = {}): Subscription {
    const starts = [options.subscription !== undefined, options.afterPosition !== undefined, options.fromEnd === true];
    if (starts.filter(Boolean).length > 1) {
      throw new TypeError("give at most one of subscription, afterPosition and fromEnd");
    }
    const initialStart: SubscribeAllRequest["start"] = options.subscription !== undefined
      ? { $case: "subscription", value: options.subscription }
      : options.fromEnd
      ? { $case: "end", value: {} }
      : { $case: "afterPosition", value: toUint64(options.afterPosition ?? 0n, "afterPosition") };
    const filter = options.filter
      ? { streamPrefixes: options.filter.streamPrefixes ?? [], eventTypes: options.filter.eventTypes ?? [] }
      : undefined;
    const checkpointInterval = options.checkpointInterval ?? 0;
    return new Subscription({
      open: (sub) => {
        const request: SubscribeAllRequest = {
          // After a reconnect: right after what was yielded or checkpointed.
          start: sub.position === undefined ? initialStart : { $case: "afterPosition", value: sub.position },
          filter,
          checkpointInterval,
          original: options.original ?? false,
        };
        return this.eventStore.subscribeAll(request);
      },
      isNew: (sub, event) => sub.position === undefined || event.position > sub.position,
    }, options);
  }

  /**
   * Follows one stream from a revision (the stream need not exist yet), resuming after a dropped
   * connection from the revision after the last one yielded.
   */
  subscribeStream(stream: string, options: SubscribeStreamOptions = {}): Subscription {
    if (options.fromEnd && options.fromRevision !== undefined) {
      throw new TypeError("give at most one of fromRevision and fromEnd");
    }
    const initialStart: SubscribeStreamRequest["start"] = options.fromEnd
      ? { $case: "end", value: {} }
      : { $case: "fromRevision", value: toUint64(options.fromRevision ?? 0n, "fromRevision") };
    return new Subscription({
      open: (sub) =>
        this.eventStore.subscribeStream({
          stream,
          start: sub.revision === undefined ? initialStart : { $case: "fromRevision", value: sub.revision + 1n },
          original: options.original ?? false,
        }),
      isNew: (sub, event) => sub.revision === undefined || event.revision > sub.revision,
    }, options);
  }

  /**
   * Stores a durable subscription's checkpoint (created if missing). Returns the stored position,
   * which is a later one if a later one was saved before.
   */
  async saveCheckpoint(subscription: string, position: Uint64Input): Promise<bigint> {
    const request = { subscription, position: toUint64(position, "position") };
    const response = await unary<{ position: bigint }>((cb) =>
      this.eventStore.saveCheckpoint(request, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
    return response.position;
  }

  /** Every durable subscription with its checkpoint and lag, by name. */
  async listSubscriptions(): Promise<SubscriptionInfo[]> {
    const response = await unary<{ subscriptions: SubscriptionInfo[] }>((cb) =>
      this.eventStore.listSubscriptions({}, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
    return response.subscriptions;
  }

  /** Deletes a durable subscription; NOT_FOUND if there is none of that name. */
  async deleteSubscription(subscription: string): Promise<void> {
    await unary<unknown>((cb) =>
      this.eventStore.deleteSubscription({ subscription }, new Metadata(), this.unaryOptions(), cb)
    );
  }

  // ---- administration ------------------------------------------------------------------------

  /**
   * Rebuilds a projection (blue/green, or in place) and yields its progress until PHASE_DONE.
   * A rebuild that fails yields its PHASE_FAILED progress, then throws RebuildFailedError.
   */
  async *rebuild(projection: string, options: RebuildOptions = {}): AsyncGenerator<RebuildProgress, void, undefined> {
    const call = this.adminService.adminRebuild({
      projection,
      strategy: options.inPlace ? RebuildStrategy.REBUILD_STRATEGY_IN_PLACE : RebuildStrategy.REBUILD_STRATEGY_BLUE_GREEN,
    });
    for await (const message of iterateCall(call)) {
      const progress = message.progress;
      if (!progress) {
        continue;
      }
      yield progress;
      if (progress.phase === RebuildProgress_Phase.PHASE_FAILED) {
        throw new RebuildFailedError(progress);
      }
    }
  }

  /** Registers a projection (a definition, or the TOML text of a projection file). */
  async registerProjection(definition: ProjectionDefinitionInput | string): Promise<ProjectionInfo> {
    const request = typeof definition === "string"
      ? { source: { $case: "toml" as const, value: definition } }
      : { source: { $case: "definition" as const, value: toDefinition(definition) } };
    const response = await unary<{ projection?: ProjectionInfo | undefined }>((cb) =>
      this.adminService.registerProjection(request, new Metadata(), this.unaryOptions(), cb)
    );
    return required(response.projection, "projection");
  }

  /**
   * Registers (or replaces, by name) an upcaster from the TOML text of an upcaster file; returns
   * it as stored. Reads then return upcast events unless `original` is set.
   */
  async registerUpcaster(toml: string): Promise<UpcasterDefinition> {
    const request = { source: { $case: "toml" as const, value: toml } };
    const response = await unary<{ upcaster?: UpcasterDefinition | undefined }>((cb) =>
      this.adminService.registerUpcaster(request, new Metadata(), this.unaryOptions(), cb)
    );
    return required(response.upcaster, "upcaster");
  }

  /** Every upcaster with where it came from, by name. */
  async listUpcasters(): Promise<RegisteredUpcaster[]> {
    const response = await unary<{ upcasters: RegisteredUpcaster[] }>((cb) =>
      this.adminService.listUpcasters({}, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
    return response.upcasters;
  }

  /** Deletes an upcaster (its events are read as stored again); NOT_FOUND if unknown. */
  async deleteUpcaster(name: string): Promise<void> {
    await unary<object>((cb) =>
      this.adminService.deleteUpcaster({ name }, new Metadata(), this.unaryOptions(), cb)
    );
  }

  /** One projection's status; NOT_FOUND for an unknown one. */
  async getProjection(name: string): Promise<ProjectionInfo> {
    const response = await unary<{ projection?: ProjectionInfo | undefined }>((cb) =>
      this.adminService.getProjection({ name }, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
    return required(response.projection, "projection");
  }

  /** Every projection with its status, by name. */
  async listProjections(): Promise<ProjectionInfo[]> {
    const response = await unary<{ projections: ProjectionInfo[] }>((cb) =>
      this.adminService.listProjections({}, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
    return response.projections;
  }

  /** Skipped events and dead letters, newest first. */
  async listSystemMessages(options: ListSystemMessagesOptions = {}): Promise<SystemMessage[]> {
    const request = {
      projection: options.projection ?? "",
      kind: options.kind ?? "",
      includeArchived: options.includeArchived ?? false,
      limit: options.limit ?? 0,
    };
    const response = await unary<{ messages: SystemMessage[] }>((cb) =>
      this.adminService.listSystemMessages(request, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
    return response.messages;
  }

  /**
   * Hard-deletes a stream: erases its events from the database (those hidden by an earlier soft
   * delete included) and closes the stream for good. `readAll` and `subscribeAll` no longer return
   * the events (their positions become gaps in the log); later appends and deletes of the stream
   * fail with FAILED_PRECONDITION, reads with NOT_FOUND. Projections keep what they applied from
   * the events until they are rebuilt. Needs a token with role admin.
   *
   * Throws WrongExpectedRevisionError when `expectedRevision` does not hold, and NotFoundError if
   * the stream never existed. A repeat answers as the first hard delete did (the same result,
   * after erasing anything left), so it is safe to retry.
   */
  async hardDeleteStream(stream: string, options: DeleteStreamOptions = {}): Promise<HardDeleteResult> {
    const request = { stream, expected: toExpected(options.expectedRevision) };
    return unary<HardDeleteStreamResponse>((cb) =>
      this.adminService.hardDeleteStream(request, new Metadata(), this.unaryOptions(), cb),
      this.retry,
    );
  }

  /** Applies a projection's dead letters again; those that succeed are archived. */
  async retryDeadLetters(projection: string): Promise<{ applied: bigint; stillFailing: bigint }> {
    return unary<{ applied: bigint; stillFailing: bigint }>((cb) =>
      this.adminService.retryDeadLetters({ projection }, new Metadata(), this.unaryOptions(), cb)
    );
  }

  // ---- health --------------------------------------------------------------------------------

  /**
   * The gRPC health status of a service: "" (the server) by default, or
   * "highwater.v1.EventStoreService". Throws (UNAVAILABLE) when the server cannot be reached.
   */
  health(service = ""): Promise<ServingStatus> {
    return unary<ServingStatus>((cb) =>
      this.generic.makeUnaryRequest(
        HEALTH_CHECK_PATH,
        (service: string) => encodeHealthCheckRequest(service),
        decodeHealthCheckResponse,
        service,
        new Metadata(),
        this.unaryOptions(),
        cb,
      ),
      this.retry,
    );
  }

  /** Waits until the server reports "" and the event store SERVING, or throws after `timeoutMs`. */
  async ready(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    for (;;) {
      try {
        if ((await this.health("")) === "SERVING" && (await this.health("highwater.v1.EventStoreService")) === "SERVING") {
          return;
        }
        last = new Error("not serving yet");
      } catch (err) {
        last = err;
      }
      if (Date.now() >= deadline) {
        throw new Error(`server at ${this.address} not ready after ${timeoutMs} ms: ${String(last)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  private unaryOptions(): Partial<CallOptions> {
    return this.callTimeoutMs === undefined ? {} : { deadline: Date.now() + this.callTimeoutMs };
  }
}

/** Splits an `http://` or `https://` scheme off: the gRPC target, and whether the scheme asks for TLS. */
function splitAddress(address: string): { target: string; tls: boolean | undefined } {
  const match = /^(https?):\/\/(.*?)\/?$/.exec(address);
  return match ? { target: match[2], tls: match[1] === "https" } : { target: address, tls: undefined };
}

function channelCredentials(address: string, schemeTls: boolean | undefined, options: ClientOptions): ChannelCredentials {
  const tls = options.tls ?? (schemeTls ? {} : undefined);
  if (tls === undefined) {
    return options.credentials ?? grpcCredentials.createInsecure();
  }
  if (options.credentials) {
    throw new TypeError("give either credentials or tls, not both");
  }
  if (schemeTls === false) {
    throw new TypeError(`tls options given for a plaintext address ${address}`);
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("give tls.cert and tls.key together");
  }
  return grpcCredentials.createSsl(pem(tls.ca, "tls.ca"), pem(tls.key, "tls.key"), pem(tls.cert, "tls.cert"));
}

function pem(value: string | Buffer | undefined, name: string): Buffer | null {
  if (value === undefined) {
    return null;
  }
  const bytes = typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value);
  if (!bytes.includes("-----BEGIN")) {
    throw new TypeError(`${name} must be PEM text (the file's contents, not its path)`);
  }
  return bytes;
}

function bearer(token: string): string {
  if (token === "" || token.trim() !== token || !/^[\x20-\x7e]+$/.test(token)) {
    throw new TypeError("token must be non-empty printable ASCII without surrounding spaces");
  }
  return `Bearer ${token}`;
}

/** An interceptor that sets one metadata entry on every call (unary and streaming). */
function withMetadata(key: string, value: string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set(key, value);
        next(metadata, listener);
      },
    });
}

/** Decodes an event's data as JSON. */
export function eventJson<T = unknown>(event: Pick<RecordedEvent, "data">): T {
  return JSON.parse(Buffer.from(event.data).toString("utf8")) as T;
}

/** A unary call; with `retry`, made again after a failure the plan retries (the call is safe to repeat). */
async function unary<T>(
  invoke: (callback: (error: ServiceError | null, response?: T) => void) => unknown,
  retry?: RetryPlan,
): Promise<T> {
  const delays = retry?.delays();
  for (;;) {
    try {
      return await new Promise<T>((resolve, reject) => {
        invoke((error, response) => (error ? reject(toHighwaterError(error)) : resolve(response as T)));
      });
    } catch (err) {
      const delay = delays !== undefined && retry!.retries(err) ? delays.next() : undefined;
      if (delay === undefined || delay.done) {
        throw err;
      }
      await sleep(delay.value);
    }
  }
}

/** A streamed read; with `retry`, opened again after a retried failure before its first message. */
async function* iterateRetrying<T>(open: () => ClientReadableStream<T>, retry?: RetryPlan): AsyncGenerator<T, void, undefined> {
  const delays = retry?.delays();
  for (;;) {
    let received = false;
    try {
      for await (const message of iterateCall(open())) {
        received = true;
        yield message;
      }
      return;
    } catch (err) {
      const delay = !received && delays !== undefined && retry!.retries(err) ? delays.next() : undefined;
      if (delay === undefined || delay.done) {
        throw err;
      }
      await sleep(delay.value);
    }
  }
}

/** Iterates a server-streaming call, turning its error into a HighwaterError and cancelling it when left early. */
async function* iterateCall<T>(call: ClientReadableStream<T>): AsyncGenerator<T, void, undefined> {
  // Errors reach the loop through the iterator; this keeps a late one (after a cancel) from being
  // an unhandled 'error' event.
  call.on("error", () => {});
  try {
    for await (const message of call as AsyncIterable<T>) {
      yield message;
    }
  } catch (err) {
    throw toHighwaterError(err);
  } finally {
    call.cancel();
  }
}

function toExpected(expected: ExpectedRevision | undefined): { $case: "revision"; value: bigint } | { $case: "state"; value: ExpectedState } | undefined {
  switch (expected) {
    case undefined:
      return undefined;
    case "any":
      return { $case: "state", value: ExpectedState.EXPECTED_STATE_ANY };
    case "no-stream":
      return { $case: "state", value: ExpectedState.EXPECTED_STATE_NO_STREAM };
    case "exists":
      return { $case: "state", value: ExpectedState.EXPECTED_STATE_STREAM_EXISTS };
    default:
      return { $case: "revision", value: toUint64(expected, "expectedRevision") };
  }
}

function toProposedEvent(event: EventData): ProposedEvent {
  return {
    id: event.id ?? randomUUID(),
    type: event.type,
    data: toBytes(event.data),
    contentType: event.contentType ?? "",
    metadata: { ...event.metadata },
  };
}

function toBytes(data: unknown): Buffer {
  if (data === undefined) {
    return Buffer.alloc(0);
  }
  if (data instanceof Uint8Array) {
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }
  if (typeof data === "string") {
    return Buffer.from(data, "utf8");
  }
  return Buffer.from(JSON.stringify(data), "utf8");
}

function toDefinition(input: ProjectionDefinitionInput): ProjectionDefinition {
  return {
    name: input.name,
    version: input.version ?? 0,
    mode: input.mode === "async" ? ProjectionMode.PROJECTION_MODE_ASYNC : ProjectionMode.PROJECTION_MODE_INLINE,
    onError: input.onError === "skip" ? OnError.ON_ERROR_SKIP : OnError.ON_ERROR_FAIL,
    setup: input.setup,
    handlers: { ...input.handlers },
  };
}

function required<T>(value: T | undefined, name: string): T {
  if (value === undefined) {
    throw new HighwaterError(Status.INTERNAL, `the server's response has no ${name}`);
  }
  return value;
}
