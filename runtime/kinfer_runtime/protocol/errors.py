"""Typed errors and the one table that maps them to HTTP status and gRPC code.

The data plane and the codecs raise these; the REST and gRPC front ends only ask this module
what to answer, so a status code is decided in exactly one place.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error a client may see; the message is sent as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferenceError):
    """The request is malformed or does not match the model's signature."""


class ModelNotFound(InferenceError):
    """No model (or version) of that name is served here."""


class RouteNotFound(InferenceError):
    """No endpoint at that path."""


class MethodNotAllowed(InferenceError):
    """The path exists but not for that HTTP method."""


class PayloadTooLarge(InferenceError):
    """The request body is larger than the server accepts."""


class Overloaded(InferenceError):
    """The queue is full; the client should back off and retry."""


class DeadlineExceeded(InferenceError):
    """The request's deadline passed before it could be answered."""


class NotReady(InferenceError):
    """The model is not loaded yet, or the server is shutting down."""


class ModelFailed(InferenceError):
    """The model's forward raised; every request of that batch gets this."""


# error type -> (HTTP status, gRPC status code name). Subclasses not listed fall back to the
# nearest listed base; anything else is a 500 / INTERNAL.
_STATUS: dict[type[InferenceError], tuple[int, str]] = {
    InvalidInput: (400, "INVALID_ARGUMENT"),
    ModelNotFound: (404, "NOT_FOUND"),
    RouteNotFound: (404, "NOT_FOUND"),
    MethodNotAllowed: (405, "UNIMPLEMENTED"),
    PayloadTooLarge: (413, "RESOURCE_EXHAUSTED"),
    Overloaded: (429, "RESOURCE_EXHAUSTED"),
    NotReady: (503, "UNAVAILABLE"),
    DeadlineExceeded: (504, "DEADLINE_EXCEEDED"),
    ModelFailed: (500, "INTERNAL"),
}
_INTERNAL = (500, "INTERNAL")


def status_of(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, gRPC code name) for any exception; unknown ones are internal errors."""
    for cls in type(exc).__mro__:
        found = _STATUS.get(cls)
        if found is not None:
            return found
    return _INTERNAL


def http_status(exc: BaseException) -> int:
    return status_of(exc)[0]


def grpc_code_name(exc: BaseException) -> str:
    return status_of(exc)[1]


# gRPC code name -> HTTP status, so gRPC answers are counted with the same `code` label.
GRPC_TO_HTTP: dict[str, int] = {"OK": 200, **{g: h for h, g in _STATUS.values()}}
GRPC_TO_HTTP["RESOURCE_EXHAUSTED"] = 429
GRPC_TO_HTTP["INTERNAL"] = 500
