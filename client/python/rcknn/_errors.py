"""gRPC status codes as Python exceptions: rcknn.Error and one subclass per code a caller can act
on. Every exception carries the status code (`.code`, a grpc.StatusCode) and the server's
message (`.message`, also str(exception))."""
from __future__ import annotations

from typing import Optional

import grpc


class Error(Exception):
    """An rcknn call failed. `code` is the grpc.StatusCode, `message` the server's message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(Error, ValueError):
    """INVALID_ARGUMENT: a malformed request; the message starts with the field's name."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(Error, LookupError):
    """NOT_FOUND: no index of that id."""
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(Error):
    """ALREADY_EXISTS: an index of that id exists."""
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(Error):
    """FAILED_PRECONDITION: the index is in the wrong state (searching one not READY, uploading
    to or building one past LOADING)."""
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(Error):
    """RESOURCE_EXHAUSTED: a server limit (points, indexes, memory, message size); the message
    names the flag."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(Error):
    """UNAVAILABLE: the server cannot be reached, is shutting down, or its disk refused a
    write."""
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(Error):
    """UNAUTHENTICATED: no bearer token, or an unknown one."""
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(Error):
    """PERMISSION_DENIED: a read-only token on a call that changes something."""
    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(Error, TimeoutError):
    """DEADLINE_EXCEEDED: the call's deadline (connect(timeout=...)) passed."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(Error):
    """CANCELLED: the call was cancelled (by the server shutting down, or another party)."""
    code = grpc.StatusCode.CANCELLED


class BuildFailed(Error):
    """The index ended FAILED; `message` is IndexInfo.error (it names the cause)."""
    code = grpc.StatusCode.ABORTED


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted, Unavailable,
    Unauthenticated, PermissionDenied, DeadlineExceeded, Cancelled)}


def from_rpc_error(error: grpc.RpcError) -> Error:
    """The rcknn exception for a failed gRPC call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = _BY_CODE.get(code, Error)
    return cls(message, code)
