// Errors surfaced by the client: every failed call rejects with a HighwaterError carrying the gRPC
// status code and the server's message, plus the rich details Highwater sends
// (google.rpc.ErrorInfo and google.rpc.BadRequest in the `grpc-status-details-bin` trailer) and the
// call's request id (`x-request-id`).

import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Metadata, status as Status } from "@grpc/grpc-js";

export { Status };

/** A field named by a google.rpc.BadRequest detail (INVALID_ARGUMENT), such as `events[2].data`. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call: the gRPC status code and the server's message. */
export class HighwaterError extends Error {
  /** The gRPC status code, such as `Status.ABORTED` (10). */
  readonly code: Status;
  /** The code's name, such as `ABORTED`. */
  readonly codeName: string;
  /** The server's message (the gRPC status details), such as `wrong expected revision for ...`. */
  readonly details: string;
  /** google.rpc.ErrorInfo reason, such as `WRONG_EXPECTED_REVISION`, when the server sent one. */
  readonly reason: string | undefined;
  /** google.rpc.ErrorInfo domain, when the server sent one. */
  readonly domain: string | undefined;
  /** google.rpc.ErrorInfo metadata (for a conflict: `stream`, `expected`, `actual`). */
  readonly info: Readonly<Record<string, string>>;
  /** google.rpc.BadRequest field violations (INVALID_ARGUMENT). */
  readonly fieldViolations: readonly FieldViolation[];
  /** The response trailers. */
  readonly metadata: Metadata | undefined;
  /**
   * The server's `x-request-id` for the call (its log lines carry it), when the server answered.
   */
  readonly requestId: string | undefined;

  constructor(
    code: Status,
    details: string,
    extra: {
      reason?: string;
      domain?: string;
      info?: Record<string, string>;
      fieldViolations?: FieldViolation[];
      metadata?: Metadata;
      cause?: unknown;
    } = {},
  ) {
    const codeName = Status[code] ?? `CODE_${code}`;
    super(`${codeName}: ${details}`, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = new.target.name;
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.reason = extra.reason;
    this.domain = extra.domain;
    this.info = extra.info ?? {};
    this.fieldViolations = extra.fieldViolations ?? [];
    this.metadata = extra.metadata;
    const requestId = extra.metadata?.get("x-request-id")[0];
    this.requestId = typeof requestId === "string" && requestId !== "" ? requestId : undefined;
  }
}

/**
 * ABORTED with ErrorInfo reason WRONG_EXPECTED_REVISION: the stream was not in the expected state.
 * Nothing was written.
 */
export class WrongExpectedRevisionError extends HighwaterError {
  /** The stream, as the server named it. */
  get stream(): string | undefined {
    return this.info.stream;
  }
  /** What the append expected, as the server wrote it. */
  get expected(): string | undefined {
    return this.info.expected;
  }
  /** The stream's last revision when the check failed; undefined when there was no stream. */
  get actual(): bigint | undefined {
    const actual = this.info.actual;
    return actual !== undefined && /^[0-9]+$/.test(actual) ? BigInt(actual) : undefined;
  }
}

/** INVALID_ARGUMENT: the request was malformed; `fieldViolations` names the fields. */
export class InvalidArgumentError extends HighwaterError {}

/** NOT_FOUND: no such stream (or it was deleted), subscription or projection. */
export class NotFoundError extends HighwaterError {}

/** ALREADY_EXISTS: an event id is already used by a different event. */
export class AlreadyExistsError extends HighwaterError {}

/**
 * FAILED_PRECONDITION: the call is valid but the server's state refuses it (an inline projection
 * refused an event, a rebuild runs elsewhere, the stream was hard-deleted).
 */
export class FailedPreconditionError extends HighwaterError {}

/** UNAVAILABLE (or a deadline passed): the server could not be reached; safe to retry. */
export class UnavailableError extends HighwaterError {}

/**
 * UNAUTHENTICATED: no token, a malformed `authorization` header, or a token the server does not
 * know. Give the client a valid `token`.
 */
export class UnauthenticatedError extends HighwaterError {}

/**
 * PERMISSION_DENIED: the token is known but its role is too low for the call (read < write <
 * admin); the message names the token and the role the call needs.
 */
export class PermissionDeniedError extends HighwaterError {}

interface GrpcLikeError {
  code: number;
  details?: string;
  message?: string;
  metadata?: Metadata;
}

function isGrpcError(err: unknown): err is GrpcLikeError {
  return (
    typeof err === "object" &&
    err !== null &&
    typeof (err as { code?: unknown }).code === "number" &&
    ("details" in err || "metadata" in err)
  );
}

/** Turns what @grpc/grpc-js reports into a HighwaterError; anything else is returned as it is. */
export function toHighwaterError(err: unknown): unknown {
  if (err instanceof HighwaterError || !isGrpcError(err)) {
    return err;
  }
  const details = err.details ?? err.message ?? "";
  const extra = decodeStatusDetails(err.metadata);
  const Ctor = err.code === Status.ABORTED && extra.reason === "WRONG_EXPECTED_REVISION"
    ? WrongExpectedRevisionError
    : BY_CODE.get(err.code) ?? HighwaterError;
  return new Ctor(err.code, details, { ...extra, metadata: err.metadata, cause: err });
}

/** The error class of each status code, the same as the Python client's exceptions. */
const BY_CODE: ReadonlyMap<number, typeof HighwaterError> = new Map<number, typeof HighwaterError>([
  [Status.INVALID_ARGUMENT, InvalidArgumentError],
  [Status.NOT_FOUND, NotFoundError],
  [Status.ALREADY_EXISTS, AlreadyExistsError],
  [Status.FAILED_PRECONDITION, FailedPreconditionError],
  [Status.UNAVAILABLE, UnavailableError],
  [Status.DEADLINE_EXCEEDED, UnavailableError],
  [Status.UNAUTHENTICATED, UnauthenticatedError],
  [Status.PERMISSION_DENIED, PermissionDeniedError],
]);

const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";
const BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest";

/** Reads google.rpc.Status from the `grpc-status-details-bin` trailer, if there is one. */
function decodeStatusDetails(metadata: Metadata | undefined): {
  reason?: string;
  domain?: string;
  info?: Record<string, string>;
  fieldViolations?: FieldViolation[];
} {
  const raw = metadata?.get("grpc-status-details-bin")[0];
  if (!(raw instanceof Uint8Array)) {
    return {};
  }
  const out: { reason?: string; domain?: string; info?: Record<string, string>; fieldViolations?: FieldViolation[] } = {};
  try {
    // google.rpc.Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
    forEachField(raw, (field, reader, wireType) => {
      if (field !== 3 || wireType !== WireType.LengthDelimited) {
        return false;
      }
      // google.protobuf.Any { string type_url = 1; bytes value = 2; }
      let typeUrl = "";
      let value: Uint8Array = new Uint8Array();
      forEachField(reader.bytes(), (f, r, w) => {
        if (f === 1 && w === WireType.LengthDelimited) typeUrl = r.string();
        else if (f === 2 && w === WireType.LengthDelimited) value = r.bytes();
        else return false;
        return true;
      });
      if (typeUrl === ERROR_INFO) {
        // google.rpc.ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
        const info: Record<string, string> = {};
        forEachField(value, (f, r, w) => {
          if (w !== WireType.LengthDelimited) return false;
          if (f === 1) out.reason = r.string();
          else if (f === 2) out.domain = r.string();
          else if (f === 3) {
            const [k, v] = readStringPair(r.bytes());
            info[k] = v;
          } else return false;
          return true;
        });
        out.info = info;
      } else if (typeUrl === BAD_REQUEST) {
        // google.rpc.BadRequest { repeated FieldViolation field_violations = 1; }
        // FieldViolation { string field = 1; string description = 2; ... }
        const violations: FieldViolation[] = [];
        forEachField(value, (f, r, w) => {
          if (f !== 1 || w !== WireType.LengthDelimited) return false;
          const [field, description] = readStringPair(r.bytes());
          violations.push({ field, description });
          return true;
        });
        out.fieldViolations = violations;
      }
      return true;
    });
  } catch {
    // Malformed details: the code and message still stand.
  }
  return out;
}

/** Calls `visit` for each field; a visitor that did not consume the field returns false. */
function forEachField(
  bytes: Uint8Array,
  visit: (field: number, reader: BinaryReader, wireType: WireType) => boolean,
): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (!visit(field, reader, wireType)) {
      reader.skip(wireType, field);
    }
  }
}

/** Fields 1 and 2 of a message, both strings (a map entry, a field violation). */
function readStringPair(bytes: Uint8Array): [string, string] {
  let first = "";
  let second = "";
  forEachField(bytes, (f, r, w) => {
    if (w !== WireType.LengthDelimited) return false;
    if (f === 1) first = r.string();
    else if (f === 2) second = r.string();
    else return false;
    return true;
  });
  return [first, second];
}
