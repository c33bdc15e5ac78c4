"""Errors raised by the client: one class per gRPC status code the server uses.

Every error carries the gRPC `code`, the server's `message`, what the server put in the rich
error details (the ErrorInfo `reason` and `metadata`, and BadRequest `field_violations`), and the
server's `request_id` for the call (its `x-request-id`), which names the call in the server's logs.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class HighwaterError(Exception):
    """A call failed. `code` is a grpc.StatusCode (None when the failure is not the server's).
    `request_id` is the server's x-request-id for the call ("" when no response came)."""

    def __init__(
        self,
        message: str,
        code: Optional[grpc.StatusCode] = None,
        reason: str = "",
        metadata: Optional[Dict[str, str]] = None,
        field_violations: Optional[List[Tuple[str, str]]] = None,
        request_id: str = "",
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations or []
        self.request_id = request_id

    def __str__(self) -> str:
        name = self.code.name if self.code else "ERROR"
        return f"{name}: {self.message}"


class WrongExpectedRevision(HighwaterError):
    """ABORTED: the stream was not in the expected state; nothing was written."""

    @property
    def stream(self) -> str:
        return self.metadata.get("stream", "")

    @property
    def expected(self) -> str:
        return self.metadata.get("expected", "")

    @property
    def actual(self) -> Optional[int]:
        """The stream's last revision when the check failed; None when there was no stream."""
        value = self.metadata.get("actual", "")
        return int(value) if value.isdigit() else None


class InvalidArgument(HighwaterError):
    """INVALID_ARGUMENT: the request was malformed; `field_violations` names the fields."""


class NotFound(HighwaterError):
    """NOT_FOUND: no such stream (or it was deleted), subscription or projection."""


class AlreadyExists(HighwaterError):
    """ALREADY_EXISTS: an event id is already used by a different event."""


class FailedPrecondition(HighwaterError):
    """FAILED_PRECONDITION: e.g. an inline projection refused an event, a rebuild runs elsewhere,
    or the stream was hard-deleted and cannot be written or deleted again."""


class Unavailable(HighwaterError):
    """UNAVAILABLE (or a deadline passed): the server could not be reached; safe to retry."""


class Unauthenticated(HighwaterError):
    """UNAUTHENTICATED: no token, a malformed `authorization` header, or a token the server does
    not know. Give the client a valid `token`."""


class PermissionDenied(HighwaterError):
    """PERMISSION_DENIED: the token is known but its role is too low for the call (the message
    names the token and the role needed: read < write < admin)."""


_BY_CODE = {
    grpc.StatusCode.ABORTED: WrongExpectedRevision,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_rpc_error(error: grpc.RpcError) -> HighwaterError:
    """Turns a grpc.RpcError into the matching HighwaterError, details included."""
    code = error.code() if hasattr(error, "code") else None
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    reason, metadata, violations = "", {}, []
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        status = None  # details missing or inconsistent with the status: keep the plain message
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    cls = _BY_CODE.get(code, HighwaterError)
    if cls is WrongExpectedRevision and reason != "WRONG_EXPECTED_REVISION":
        cls = HighwaterError  # another conflict, such as a read that raced a delete
    return cls(message, code, reason, metadata, violations, request_id(error))


def request_id(call) -> str:
    """The server's x-request-id of a finished call or failed call ("" if it sent none). A refused
    call has only trailers, so they are looked at first; a normal response has it in its headers."""
    for name in ("trailing_metadata", "initial_metadata"):
        try:
            pairs = getattr(call, name)() or ()
        except Exception:  # not a call, or one without metadata
            continue
        for key, value in pairs:
            if key == "x-request-id":
                return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""
