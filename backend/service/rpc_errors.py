"""Errors across the wire: LaminaError classes to gRPC status codes, and back again.

Shared by both ends of the API: the server (backend/api/server.py) answers with
``status_of``, ``RemoteService`` (remote.py) raises what ``error_from_rpc`` makes of it.

The server answers every failure with a status code and one plain line; the class name of
the LaminaError rides along in the trailing metadata, so the client raises the same class
when it knows it (PointNotFound stays PointNotFound) and ApiError otherwise.
"""

from __future__ import annotations

import grpc

from .. import errors as core_errors
from ..engine.safewrite import PathNotAllowed, TargetError, TargetExists
from ..errors import LaminaError

__all__ = ["PathNotAllowed", "TargetError", "TargetExists"]

# Trailing metadata key carrying the class name of the server-side error.
ERROR_CLASS_KEY = "lamina-error-class"


class ApiError(LaminaError):
    """A failure reported by a lamina server (or the way to it), with its status code."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self.exit_code = 2
        elif code == grpc.StatusCode.CANCELLED:
            self.exit_code = 130


class TaskNotFound(LaminaError):
    """No task of this server has that id."""


class SourceNotFound(LaminaError):
    """The image or device to back up is not on the server."""


class ShuttingDown(LaminaError):
    """The server stopped taking new work: it is shutting down."""


class TooManyStreams(LaminaError):
    """A client (or all of them) has as many server streams open as the server allows."""


class Unimplemented(LaminaError):
    """The server's service layer does not offer this operation."""


# Status codes by class name, most specific first along the class's MRO. Names, not
# classes: several live in modules a front end must not import (storage, for one).
_CODES: dict[str, grpc.StatusCode] = {
    # the client's own request
    "UsageError": grpc.StatusCode.INVALID_ARGUMENT,
    "ChangedRangesError": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidRange": grpc.StatusCode.INVALID_ARGUMENT,
    "KubeInvalid": grpc.StatusCode.INVALID_ARGUMENT,
    "PathNotAllowed": grpc.StatusCode.PERMISSION_DENIED,
    "TargetError": grpc.StatusCode.INVALID_ARGUMENT,
    "Unimplemented": grpc.StatusCode.UNIMPLEMENTED,
    # things that are not there
    "PointNotFound": grpc.StatusCode.NOT_FOUND,
    "RepositoryNotFound": grpc.StatusCode.NOT_FOUND,
    "FileNotFound": grpc.StatusCode.NOT_FOUND,
    "SnapshotNotFound": grpc.StatusCode.NOT_FOUND,
    "KubeNotFound": grpc.StatusCode.NOT_FOUND,
    "NoSuchContext": grpc.StatusCode.NOT_FOUND,
    "TaskNotFound": grpc.StatusCode.NOT_FOUND,
    "SourceNotFound": grpc.StatusCode.NOT_FOUND,
    # the server's side is not in a state to do it
    "WrongPassword": grpc.StatusCode.FAILED_PRECONDITION,
    "PasswordRequired": grpc.StatusCode.FAILED_PRECONDITION,
    "UnsupportedFormat": grpc.StatusCode.FAILED_PRECONDITION,
    "RepositoryExists": grpc.StatusCode.FAILED_PRECONDITION,
    "SourceError": grpc.StatusCode.FAILED_PRECONDITION,
    "FsReadError": grpc.StatusCode.FAILED_PRECONDITION,
    "FilesUnavailable": grpc.StatusCode.FAILED_PRECONDITION,
    "PointProtected": grpc.StatusCode.FAILED_PRECONDITION,
    "KubeError": grpc.StatusCode.FAILED_PRECONDITION,
    # conflicts with other work on the repository or the cluster
    "RepositoryLocked": grpc.StatusCode.ABORTED,
    "KubeConflict": grpc.StatusCode.ABORTED,
    # damaged data
    "CorruptObject": grpc.StatusCode.DATA_LOSS,
    "MissingObject": grpc.StatusCode.DATA_LOSS,
    "CorruptFilesystem": grpc.StatusCode.DATA_LOSS,
    # something the server needs does not answer
    "StorageUnavailable": grpc.StatusCode.UNAVAILABLE,
    "ClusterUnreachable": grpc.StatusCode.UNAVAILABLE,
    "ShuttingDown": grpc.StatusCode.UNAVAILABLE,
    "SnapshotTimeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "Cancelled": grpc.StatusCode.CANCELLED,
    "TooManyStreams": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


MAX_MESSAGE = 1000  # characters: an error never echoes megabytes of a request back


def one_line(text: str) -> str:
    """A message as one line: never a traceback or a multi-line dump across the wire."""
    lines = [line.strip() for line in str(text)[: 4 * MAX_MESSAGE].splitlines() if line.strip()]
    joined = "; ".join(lines) or "failed"
    return joined if len(joined) <= MAX_MESSAGE else joined[: MAX_MESSAGE - 1] + "…"


def status_of(error: LaminaError) -> tuple[grpc.StatusCode, str]:
    """The status code and message for an error the service layer raised."""
    for cls in type(error).__mro__:
        code = _CODES.get(cls.__name__)
        if code is not None:
            return code, one_line(str(error))
    return grpc.StatusCode.FAILED_PRECONDITION, one_line(str(error))


_SERVICE_ERRORS: dict[str, type[LaminaError]] = {
    cls.__name__: cls for cls in (PathNotAllowed, TargetError, TargetExists)
}


def _known_class(name: str) -> type[LaminaError] | None:
    candidate = globals().get(name) or getattr(core_errors, name, None) or _SERVICE_ERRORS.get(name)
    if (
        isinstance(candidate, type)
        and issubclass(candidate, LaminaError)
        and candidate is not ApiError
    ):
        return candidate
    return None


def error_from_rpc(error: grpc.RpcError, address: str) -> LaminaError:
    """The LaminaError for a failed call: the server's own class when known."""
    code: grpc.StatusCode = (
        error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    )
    details = (
        one_line(error.details() or "") if isinstance(error, grpc.Call) else one_line(str(error))
    )
    trailing: tuple[tuple[str, str | bytes], ...] = (
        tuple(error.trailing_metadata() or ()) if isinstance(error, grpc.Call) else ()
    )
    class_name = next((str(value) for key, value in trailing if key == ERROR_CLASS_KEY), None)
    if class_name is None:
        # Not an answer of a lamina server: the way to it failed.
        if code == grpc.StatusCode.UNAVAILABLE:
            return ApiError(f"cannot reach the lamina server at {address}: {details}", code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ApiError(f"the lamina server at {address} did not answer in time", code)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return ApiError(f"the lamina server at {address} refused the token: {details}", code)
        return ApiError(details, code)
    known = _known_class(class_name)
    if known is not None:
        try:
            return known(details)
        except TypeError:  # a class with a richer constructor
            pass
    return ApiError(details, code)
