"""Errors lingo answers itself, each carrying its HTTP status and OpenAI error type.

The proxy turns them into OpenAI-shaped JSON responses; the batch handler into response envelopes.
"""

from __future__ import annotations

from typing import Any


class LingoError(Exception):
    """An answer lingo gives instead of a backend's: status, OpenAI error type and code."""

    status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Human-readable reason, shown to the client.
        self.message = message
        #: Seconds the client should wait before trying again (sent as `Retry-After`).
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The OpenAI error body: `{"error": {"message", "type", "code"}}`."""
        return {"error": {"message": self.message, "type": self.error_type, "code": self.code}}

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later (worth a batch retry)."""
        return self.status in (502, 503, 504)


class BadRequest(LingoError):
    status, error_type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(LingoError):
    status, error_type, code = 401, "invalid_request_error", "invalid_api_key"


class ModelNotFound(LingoError):
    status, error_type, code = 404, "invalid_request_error", "model_not_found"


class MethodNotAllowed(LingoError):
    status, error_type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(LingoError):
    status, error_type, code = 408, "invalid_request_error", "request_timeout"


class HeadersTooLarge(LingoError):
    status, error_type, code = 431, "invalid_request_error", "headers_too_large"


class BodyTooLarge(LingoError):
    status, error_type, code = 413, "invalid_request_error", "request_too_large"


class QueueFull(LingoError):
    status, error_type, code = 429, "rate_limit_error", "queue_full"


class FlexUnavailable(LingoError):
    """A flex request found no free slot in time: capacity is short, come back later."""

    status, error_type, code = 429, "rate_limit_error", "resource_unavailable"


class BackendUnreachable(LingoError):
    status, error_type, code = 502, "server_error", "backend_unreachable"


class UpstreamTimeout(LingoError):
    status, error_type, code = 504, "server_error", "upstream_timeout"


class NoEndpoint(LingoError):
    status, error_type, code = 503, "server_error", "no_ready_endpoint"


class ShuttingDown(LingoError):
    status, error_type, code = 503, "server_error", "shutting_down"


class DeadlineExceeded(LingoError):
    """A batch request's `options.deadline` passed before it got an answer."""

    status, error_type, code = 504, "server_error", "deadline_exceeded"


class ResponseTooLarge(LingoError):
    """A batch answer larger than the broker accepts: published as this small error instead."""

    status, error_type, code = 500, "server_error", "response_too_large"


class TooManyDeliveries(LingoError):
    """A batch message delivered more than `LINGO_BATCH_MAX_DELIVERIES` times: answered, not run again."""

    status, error_type, code = 500, "server_error", "too_many_deliveries"
