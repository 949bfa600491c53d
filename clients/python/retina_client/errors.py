"""The service's errors as Python exceptions.

The service's statuses name the bad field first ("spec.world_size: must be
>= 1", "name: the model name 'x' belongs to user 'bob'"); `field` is that
name, or None when the message names none.
"""
import re

import grpc

# "field.path: message" or, for the job file, "spec.config_yaml:LINE:COL: key.path: message".
_NAME = r"[A-Za-z_][A-Za-z0-9_.\[\]]*"
_FIELD = re.compile(r"^(" + _NAME + r")(?::(\d+):(\d+))?: (?:(" + _NAME + r"): )?")


class RetinaError(Exception):
    """A call the service refused or could not complete."""

    def __init__(self, code, message, field=None, method=None, key=None, line=None):
        self.code = code            # grpc.StatusCode
        self.message = message      # the service's words
        self.field = field          # the request field it names, or None
        self.method = method        # the RPC, e.g. "SubmitJob"
        self.key = key              # for field spec.config_yaml: the job-file key it names, or None
        self.line = line            # and the job file's line, or None
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {message}")


class InvalidArgument(RetinaError):
    pass


class NotFound(RetinaError):
    pass


class AlreadyExists(RetinaError):
    pass


class PermissionDenied(RetinaError):
    pass


class Unauthenticated(RetinaError):
    pass


class FailedPrecondition(RetinaError):
    pass


class Unavailable(RetinaError):
    pass


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_rpc_error(e, method=None):
    """The RetinaError subclass for a grpc.RpcError."""
    message = e.details() or ""
    m = _FIELD.match(message)
    field = m.group(1) if m else None
    key = m.group(4) if m and field == "spec.config_yaml" else None
    line = int(m.group(2)) if m and m.group(2) else None
    return _BY_CODE.get(e.code(), RetinaError)(e.code(), message, field, method, key, line)
