// @highwater/client: the Node.js client of the Highwater event store.

export {
  type AppendOptions,
  type AppendResult,
  type CallRetryOptions,
  Client,
  type ClientOptions,
  DEFAULT_CALL_RETRY,
  DEFAULT_CALL_TIMEOUT_MS,
  DEFAULT_CHANNEL_OPTIONS,
  type DeleteStreamOptions,
  type EventData,
  type EventFilter,
  eventJson,
  type ExpectedRevision,
  type HardDeleteResult,
  type ListSystemMessagesOptions,
  type LoadAggregateOptions,
  type LoadedAggregate,
  type ProjectionDefinitionInput,
  type ReadAllOptions,
  ReadResult,
  type ReadStreamOptions,
  type RebuildOptions,
  RebuildFailedError,
  type SnapshotData,
  type SnapshotRead,
  type SubscribeAllOptions,
  type SubscribeStreamOptions,
  type TlsOptions,
} from "./client.js";
export {
  AlreadyExistsError,
  FailedPreconditionError,
  type FieldViolation,
  HighwaterError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  Status,
  UnauthenticatedError,
  UnavailableError,
  WrongExpectedRevisionError,
} from "./errors.js";
export type { ServingStatus } from "./health.js";
export {
  type ReconnectOptions,
  Subscription,
  type SubscriptionHooks,
  type SubscriptionOptions,
} from "./subscription.js";
export { toUint64, U64_MAX, type Uint64Input } from "./uint64.js";
export type { RecordedEvent, Snapshot, SubscriptionInfo } from "./gen/highwater/v1/event_store.js";
export {
  type ProjectionDefinition,
  type ProjectionInfo,
  type RegisteredUpcaster,
  type UpcasterDefinition,
  type ProjectionVersion,
  type RebuildProgress,
  RebuildProgress_Phase,
  type SystemMessage,
} from "./gen/highwater/v1/admin.js";
