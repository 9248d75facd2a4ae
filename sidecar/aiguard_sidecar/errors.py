"""Errors the sidecar answers with, independent of the wire format.

::

    ProxyError                    raised anywhere on a request's path; carries an ErrorKind
      kind: ErrorKind             status code + error type name shared by both formats
      code: str                   machine-readable reason (``model_not_allowed``, ...)
      message: str                says what happened and which policy rule decided
      retry_after: float | None   seconds, for 429 and 503

The provider adapters render a ``ProxyError`` in the caller's own format (``providers/``):
OpenAI ``{"error": {"message", "type", "param", "code"}}`` or Anthropic
``{"type": "error", "error": {"type", "message"}}``. Messages never contain keys or prompt text.
"""

from __future__ import annotations

import enum
import math


class ErrorKind(enum.Enum):
    """HTTP status and error ``type`` (Anthropic's names, which OpenAI SDKs accept too)."""

    INVALID_REQUEST = (400, "invalid_request_error")
    AUTHENTICATION = (401, "authentication_error")
    PERMISSION = (403, "permission_error")
    NOT_FOUND = (404, "not_found_error")
    METHOD_NOT_ALLOWED = (405, "invalid_request_error")
    TOO_LARGE = (413, "request_too_large")
    RATE_LIMITED = (429, "rate_limit_error")
    INTERNAL = (500, "api_error")
    BAD_GATEWAY = (502, "api_error")
    UNAVAILABLE = (503, "overloaded_error")
    GATEWAY_TIMEOUT = (504, "timeout_error")

    def __init__(self, status: int, type_name: str) -> None:
        self.status = status
        self.type_name = type_name


class ProxyError(Exception):
    """A request the sidecar answers itself instead of forwarding."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str,
        rule: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.rule = rule
        self.retry_after = retry_after
        self.param = param

    @property
    def status(self) -> int:
        return self.kind.status

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def invalid(message: str, *, code: str = "invalid_request", param: str | None = None) -> ProxyError:
    return ProxyError(ErrorKind.INVALID_REQUEST, message, code=code, param=param)


def not_found(message: str, *, code: str = "not_found") -> ProxyError:
    return ProxyError(ErrorKind.NOT_FOUND, message, code=code)


def bad_gateway(message: str, *, code: str = "upstream_error") -> ProxyError:
    return ProxyError(ErrorKind.BAD_GATEWAY, message, code=code)
