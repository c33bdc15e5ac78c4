"""Errors raised by the client: one class per gRPC status code the server uses.

Every error carries the gRPC `code`, the server's `message`, and what the server put in the rich
error details: the ErrorInfo `reason` and `metadata`, and BadRequest `field_violations`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class HighwaterError(Exception):
    """A call failed. `code` is a grpc.StatusCode (None when the failure is not the server's)."""

    def __init__(
        self,
        message: str,
        code: Optional[grpc.StatusCode] = None,
        reason: str = "",
        metadata: Optional[Dict[str, str]] = None,
        field_violations: Optional[List[Tuple[str, str]]] = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations or []

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
    def actual(self) -> str:
        return self.metadata.get("actual", "")


class InvalidArgument(HighwaterError):
    """INVALID_ARGUMENT: the request was malformed; `field_violations` names the fields."""


class NotFound(HighwaterError):
    """NOT_FOUND: no such stream, subscription or projection."""


class AlreadyExists(HighwaterError):
    """ALREADY_EXISTS: an event id is already used by a different event."""


class FailedPrecondition(HighwaterError):
    """FAILED_PRECONDITION: e.g. an inline projection refused an event, or a rebuild runs elsewhere."""


class Unavailable(HighwaterError):
    """UNAVAILABLE (or a deadline passed): the server could not be reached; safe to retry."""


_BY_CODE = {
    grpc.StatusCode.ABORTED: WrongExpectedRevision,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
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
    return cls(message, code, reason, metadata, violations)
