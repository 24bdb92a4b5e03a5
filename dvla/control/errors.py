"""Errors the control-plane parts raise; the weight_control server maps `.code` to a gRPC status."""

from __future__ import annotations


class ControlError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ControlError):
    code = "INVALID_ARGUMENT"


class AlreadyExists(ControlError):
    code = "ALREADY_EXISTS"


class OutOfOrder(ControlError):
    code = "FAILED_PRECONDITION"


class NotFound(ControlError):
    code = "NOT_FOUND"


class DataLoss(ControlError):
    """Truncated stream or checksum mismatch."""

    code = "DATA_LOSS"


class TooLarge(ControlError):
    code = "RESOURCE_EXHAUSTED"


class PermissionDenied(ControlError):
    code = "PERMISSION_DENIED"


class Superseded(ControlError):
    """A process whose worker id a newer process registered under: it is out of the run."""

    code = "ABORTED"


class DeadlineExceeded(ControlError):
    code = "DEADLINE_EXCEEDED"
